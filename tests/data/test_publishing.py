"""A dbt build publishes all or nothing: a failing error-severity test leaves every mart as it was.

What it publishes is described where the UI shows it: each model's rows, column types and days.
"""

import datetime as dt

from churn_assets.ingest.schema import EVENTS_TABLE
from tests.conftest import SMALL_GRAPH_DAYS

DAY = dt.date(2026, 7, 1)
USERS = ["1,2026-06-01,pro,US,organic", "2,2026-06-20,free,IN,social", "4,2026-07-02,pro,DE,organic"]
EVENTS = [
    "1,1,login,2026-07-01 09:00:00,",
    "2,1,video_minutes,2026-07-01 09:30:00,12.5",
    "3,2,login,2026-07-01 10:00:00,",
]


def test_a_failing_dbt_test_leaves_every_mart_as_it_was_before_the_build(platform, source_files):
    platform.use_files(source_files.write(USERS, EVENTS))
    assert platform.materialize_data(DAY, DAY).success
    before = platform.content_hashes("marts")
    # A row no ingest rule stops (a bug, a hand edit): user 4 signed up the day after it.
    with platform.resources["warehouse"].get_connection() as con:
        con.execute(f"INSERT INTO {EVENTS_TABLE} VALUES (9, 4, 'login', TIMESTAMP '2026-07-01 12:00:00', NULL, now())")

    result = platform.materialize(DAY, DAY, "group:transform")

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "hold their rows from before this run" in message
    assert "marts.fct_user_features" in message
    assert "- tenure_days_not_negative on fct_user_features: No snapshot is dated before its user signed up." in message
    failed_checks = {c.check_name: c.description for c in result.get_asset_check_evaluations() if not c.passed}
    assert failed_checks == {"tenure_days_not_negative": "No snapshot is dated before its user signed up."}
    assert platform.content_hashes("marts") == before
    assert platform.query("SELECT count(*) FROM information_schema.schemata WHERE schema_name = '_last_good'") == [(0,)]


def test_every_dbt_model_is_published_with_its_row_count_column_types_and_days(small_graph):
    platform, result = small_graph
    published = [
        event.materialization
        for event in result.get_asset_materialization_events()
        if event.materialization.asset_key.path[0] in ("staging", "intermediate", "marts")
    ]
    models = {m.asset_key.path[-1] for m in published}
    assert models == {"stg_users", "stg_events", "int_user_daily_activity", "fct_user_features", "fct_churn_labels"}
    for materialization in published:
        table = ".".join(materialization.asset_key.path)
        rows = materialization.metadata["dagster/row_count"].value
        assert isinstance(rows, int) and rows > 0, table
        assert rows == platform.query(f"SELECT count(*) FROM {table}")[0][0], table
        columns = [(c.name, c.type) for c in materialization.metadata["dagster/column_schema"].value.columns]
        assert columns == [(name, data_type) for name, data_type, *_ in platform.query(f"DESCRIBE {table}")], table
    last_days = {m.asset_key.path[-1]: m.metadata["last_date"].value for m in published}
    assert last_days["fct_user_features"] == last_days["stg_events"] == SMALL_GRAPH_DAYS[1].isoformat()
