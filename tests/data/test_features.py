"""Feature and label values for hand-built users, end to end through real Dagster, DuckDB and dbt runs.

The SQL's cases live in dbt's unit tests (tests/data/test_dbt_unit_tests.py); this spec proves the
same values come out of ingest, the daily partitioned build and the labels as Dagster runs them.

The cast (July–September 2026):
- Ada (1, pro, signed up 2026-06-01): a login and a lesson on 07-01, 07-10, 07-20 and 07-28,
  30 video minutes on 07-28, a 29 USD payment on 07-01, then a login on 08-20 and on 09-05.
- Bo (2, free, signed up 2026-07-01): one login on 07-05, never again.
- Cy (3, team, signed up 2026-06-15): a failed 99 USD payment on 07-15, a login on 07-29.
- Dee (4, free, signed up 2026-07-01): a login on 07-30, so that day has events and snapshots.
"""

import datetime as dt

import pytest

from churn_assets.settings import LOW_VOLUME_TAG

USERS = [
    "1,2026-06-01,pro,US,organic",
    "2,2026-07-01,free,IN,social",
    "3,2026-06-15,team,GB,referral",
    "4,2026-07-01,free,FR,organic",
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
    "401,4,login,2026-07-30 08:00:00,",
]
FIRST_DAY, LAST_DAY = dt.date(2026, 7, 1), dt.date(2026, 9, 5)


@pytest.mark.slow
def test_known_users_get_their_features_and_labels_through_the_daily_build(platform, source_files):
    platform.use_files(source_files.write(USERS, EVENTS))
    # A hand-built export has days without events; its operator says so.
    result = platform.materialize(FIRST_DAY, LAST_DAY, "group:ingest or group:transform", tags={LOW_VOLUME_TAG: "true"})
    assert result.success

    ada = (
        platform.frame(
            "SELECT * EXCLUDE (user_id, snapshot_date) FROM marts.fct_user_features "
            "WHERE user_id = 1 AND snapshot_date = DATE '2026-07-30'"
        )
        .iloc[0]
        .to_dict()
    )
    assert ada == {
        "active_days_7d": 1,
        "active_days_14d": 2,
        "active_days_30d": 4,
        "engagement_events_7d": 3,
        "engagement_events_14d": 5,
        "engagement_events_30d": 9,
        "lesson_views_7d": 1,
        "lesson_views_14d": 2,
        "lesson_views_30d": 4,
        "quiz_attempts_7d": 0,
        "quiz_attempts_30d": 0,
        "video_minutes_7d": 30.0,
        "video_minutes_14d": 30.0,
        "video_minutes_30d": 30.0,
        "engagement_trend_7d_30d": round((3 / 7) / (9 / 30), 4),
        "lesson_trend_7d_30d": round((1 / 7) / (4 / 30), 4),
        "days_since_last_activity": 2,
        "tenure_days": 59,
        "plan": "pro",
        "acquisition_channel": "organic",
        "payments_30d": 1,
        "failed_payments_30d": 0,
        "days_since_last_payment": 29,
        "support_tickets_30d": 0,
    }
    assert platform.query(
        "SELECT user_id, churned FROM marts.fct_churn_labels WHERE snapshot_date = DATE '2026-07-30' ORDER BY user_id"
    ) == [(1, False), (2, True), (3, True), (4, True)], "only Ada came back within 30 days"
    days_without_events = platform.query(
        "SELECT count(*) FROM marts.fct_user_features WHERE snapshot_date BETWEEN DATE '2026-07-02' AND DATE '2026-07-04'"
    )
    assert days_without_events == [(0,)]
