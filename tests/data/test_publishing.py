"""A dbt build publishes all or nothing: a failing error-severity test leaves every mart as it was."""

import datetime as dt

from churn_assets.ingest.schema import EVENTS_TABLE

DAY = dt.date(2026, 7, 1)
USERS = ["1,2026-06-01,pro,US,organic", "2,2026-06-20,free,IN,social", "4,2026-07-02,pro,DE,organic"]
EVENTS = ["1,1,login,2026-07-01 09:00:00,", "2,1,video_minutes,2026-07-01 09:30:00,12.5", "3,2,login,2026-07-01 10:00:00,"]


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
    assert "accepted_range_fct_user_features_tenure_days" in message
    failed_checks = {c.check_name for c in result.get_asset_check_evaluations() if not c.passed}
    assert any("tenure_days" in name for name in failed_checks)
    assert platform.content_hashes("marts") == before
    assert platform.query("SELECT count(*) FROM information_schema.schemata WHERE schema_name = '_last_good'") == [(0,)]
