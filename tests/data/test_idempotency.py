"""Re-materializing a partition replaces it: same rows, never duplicates."""

import datetime as dt

import pytest

from churn_assets.settings import DBT_PROJECT_DIR

FIRST, LAST = dt.date(2026, 7, 1), dt.date(2026, 7, 3)
AGAIN = dt.date(2026, 7, 2)
TABLES = {
    "raw.events": "SELECT * EXCLUDE (_loaded_at) FROM raw.events ORDER BY event_id",
    "intermediate.int_user_daily_activity": "SELECT * FROM intermediate.int_user_daily_activity ORDER BY ALL",
    "marts.fct_user_features": "SELECT * FROM marts.fct_user_features ORDER BY ALL",
}


@pytest.mark.slow
def test_materializing_a_day_twice_gives_the_same_rows_and_leaves_no_dbt_target_behind(platform):
    platform.configure(CHURNOPS_USERS="400")
    first = platform.materialize_data(FIRST, LAST)
    assert first.success
    before = {table: platform.query(sql) for table, sql in TABLES.items()}
    assert all(before.values())

    again = platform.materialize_data(AGAIN, AGAIN)

    assert again.success
    for table, sql in TABLES.items():
        assert platform.query(sql) == before[table], f"{table} changed after re-materializing {AGAIN}"
    runs = {first.run_id[:7], again.run_id[:7]}
    assert not [p.name for p in (DBT_PROJECT_DIR / "target").iterdir() if any(f"-{run}-" in p.name for run in runs)]
