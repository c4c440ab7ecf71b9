"""Feature and label values for hand-built users, through real Dagster, DuckDB and dbt runs.

The cast (July–September 2026):
- Ada (1, pro, signed up 2026-06-01): a login and a lesson on 07-01, 07-10, 07-20 and 07-28,
  30 video minutes on 07-28, a 29 USD payment on 07-01, then a login on 08-20 and on 09-05.
- Bo (2, free, signed up 2026-07-01): one login on 07-05, never again.
- Cy (3, team, signed up 2026-06-15): a failed 99 USD payment on 07-15, a login on 07-29.
"""

import datetime as dt

import pytest

from churn_assets.settings import LOW_VOLUME_TAG

USERS = [
    "1,2026-06-01,pro,US,organic",
    "2,2026-07-01,free,IN,social",
    "3,2026-06-15,team,GB,referral",
]
EVENTS = [
    "101,1,login,2026-07-01 09:00:00,",
    "102,1,lesson_view,2026-07-01 09:05:00,",
    "103,1,payment,2026-07-01 09:10:00,29.0",
    "104,1,login,2026-07-10 18:00:00,",
    "105,1,lesson_view,2026-07-10 18:10:00,",
    "106,1,login,2026-07-20 07:00:00,",
    "107,1,lesson_view,2026-07-20 07:30:00,",
    "108,1,login,2026-07-28 20:00:00,",
    "109,1,lesson_view,2026-07-28 20:01:00,",
    "110,1,video_minutes,2026-07-28 20:30:00,30",
    "111,1,login,2026-08-20 12:00:00,",
    "112,1,login,2026-09-05 12:00:00,",
    "201,2,login,2026-07-05 10:00:00,",
    "301,3,payment_failed,2026-07-15 00:00:01,99",
    "302,3,login,2026-07-29 23:59:59,",
]
FIRST_DAY, LAST_DAY = dt.date(2026, 7, 1), dt.date(2026, 9, 5)


@pytest.fixture(scope="module")
def built(module_platform, module_source_files):
    module_platform.use_files(module_source_files.write(USERS, EVENTS))
    # A hand-built export has days without events; its operator says so.
    result = module_platform.materialize(FIRST_DAY, LAST_DAY, "group:ingest or group:transform", tags={LOW_VOLUME_TAG: "true"})
    assert result.success
    return module_platform


def _features(platform, user_id: int, day: str) -> dict:
    frame = platform.frame(
        f"SELECT * FROM marts.fct_user_features WHERE user_id = {user_id} AND snapshot_date = DATE '{day}'"
    )
    assert len(frame) == 1, f"expected one feature row for user {user_id} on {day}, got {len(frame)}"
    return frame.iloc[0].to_dict()


def _label(platform, user_id: int, day: str):
    rows = platform.query(
        f"SELECT churned FROM marts.fct_churn_labels WHERE user_id = {user_id} AND snapshot_date = DATE '{day}'"
    )
    return rows[0][0] if rows else None


@pytest.mark.slow
def test_rolling_windows_recency_and_payments_of_a_known_user(built):
    ada = _features(built, 1, "2026-07-30")
    assert (ada["active_days_7d"], ada["active_days_14d"], ada["active_days_30d"]) == (1, 2, 4)
    assert (ada["lesson_views_7d"], ada["lesson_views_14d"], ada["lesson_views_30d"]) == (1, 2, 4)
    assert (ada["engagement_events_7d"], ada["engagement_events_30d"]) == (3, 9)
    assert ada["video_minutes_7d"] == 30.0
    assert ada["days_since_last_activity"] == 2
    assert ada["tenure_days"] == 59
    assert ada["plan"] == "pro"
    assert (ada["payments_30d"], ada["failed_payments_30d"], ada["days_since_last_payment"]) == (1, 0, 29)
    assert ada["engagement_trend_7d_30d"] == pytest.approx((3 / 7) / (9 / 30), abs=1e-4)
    assert ada["lesson_trend_7d_30d"] == pytest.approx((1 / 7) / (4 / 30), abs=1e-4)


@pytest.mark.slow
def test_windows_include_the_snapshot_day_and_end_29_days_before(built):
    ada = _features(built, 1, "2026-07-10")
    assert (ada["active_days_7d"], ada["active_days_30d"], ada["days_since_last_activity"]) == (1, 2, 0)
    # 07-01 is the 30th day of the window ending 07-30, 07-31's window starts on 07-02.
    assert _features(built, 1, "2026-07-31")["active_days_30d"] == 3


@pytest.mark.slow
def test_a_user_leaves_the_population_after_30_quiet_days(built):
    bo = _features(built, 2, "2026-07-30")
    assert (bo["active_days_7d"], bo["active_days_30d"], bo["days_since_last_activity"]) == (0, 1, 25)
    assert bo["days_since_last_payment"] == 365, "never paid is capped at 365"
    assert bo["lesson_trend_7d_30d"] == 1.0, "no lessons in 30 days is the neutral trend"
    assert _features(built, 2, "2026-08-03")["days_since_last_activity"] == 29
    assert built.query("SELECT count(*) FROM marts.fct_user_features WHERE user_id = 2 AND snapshot_date >= '2026-08-04'") == [(0,)]


@pytest.mark.slow
def test_failed_payments_count_but_do_not_make_a_day_active(built):
    cy = _features(built, 3, "2026-07-30")
    assert (cy["failed_payments_30d"], cy["payments_30d"], cy["days_since_last_payment"]) == (1, 0, 365)
    assert cy["active_days_30d"] == 1
    assert built.query("SELECT count(*) FROM marts.fct_user_features WHERE user_id = 3 AND snapshot_date < '2026-07-29'") == [(0,)]
    daily = built.query(
        "SELECT engagement_events, failed_payments FROM intermediate.int_user_daily_activity "
        "WHERE user_id = 3 AND activity_date = '2026-07-15'"
    )
    assert daily == [(0, 1)]


@pytest.mark.slow
def test_labels_say_who_came_back_within_30_days(built):
    assert _label(built, 1, "2026-07-30") is False, "Ada logged in again on 08-20"
    assert _label(built, 1, "2026-07-20") is False
    assert _label(built, 2, "2026-07-30") is True, "Bo never came back"
    assert _label(built, 3, "2026-07-30") is True


@pytest.mark.slow
def test_only_snapshots_with_30_observed_days_are_labelled(built):
    observed_through = dt.date(2026, 9, 5)
    last_labelled = built.query("SELECT max(snapshot_date) FROM marts.fct_churn_labels")[0][0]
    assert last_labelled == observed_through - dt.timedelta(days=30)
    assert _label(built, 1, "2026-08-20") is None
