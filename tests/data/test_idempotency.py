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
def test_materializing_a_day_twice_gives_the_same_rows(platform):
    platform.configure(CHURNOPS_USERS="400")
    assert platform.materialize_data(FIRST, LAST).success
    before = {table: platform.query(sql) for table, sql in TABLES.items()}
    assert all(before.values())

    assert platform.materialize_data(AGAIN, AGAIN).success

    for table, sql in TABLES.items():
        assert platform.query(sql) == before[table], f"{table} changed after re-materializing {AGAIN}"


@pytest.mark.slow
def test_a_successful_dbt_build_leaves_no_target_folder_behind(platform):
    platform.configure(CHURNOPS_USERS="50")
    result = platform.materialize_data(FIRST, FIRST)
    assert result.success
    run = result.run_id[:7]
    assert not [p.name for p in (DBT_PROJECT_DIR / "target").iterdir() if f"-{run}-" in p.name]
