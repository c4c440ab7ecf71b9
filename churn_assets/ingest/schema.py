"""The raw-data contract: what a source must deliver, whoever produces it.

The synthetic generator, the user-file reader, the validation checks and
``docs/data-contract.md`` all describe this one shape.
"""

from __future__ import annotations

RAW_SCHEMA = "raw"
USERS_TABLE = f"{RAW_SCHEMA}.users"
EVENTS_TABLE = f"{RAW_SCHEMA}.events"

USER_COLUMNS: dict[str, str] = {
    "user_id": "BIGINT",
    "signup_date": "DATE",
    "plan": "VARCHAR",
    "country": "VARCHAR",
    "acquisition_channel": "VARCHAR",
}
USER_KEYS = ("user_id", "signup_date", "plan")

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "BIGINT",
    "user_id": "BIGINT",
    "event_type": "VARCHAR",
    "event_ts": "TIMESTAMP",
    "value": "DOUBLE",
}
EVENT_KEYS = ("event_id", "user_id", "event_type", "event_ts")

CHANNELS = ("organic", "paid_search", "social", "referral", "partner")
COUNTRIES = ("US", "IN", "GB", "DE", "BR", "NG", "CA", "FR", "ES", "PK")
ENGAGEMENT_EVENTS = ("login", "lesson_view", "quiz_attempt", "video_minutes", "support_ticket")
PAYMENT_EVENTS = ("payment", "payment_failed")
EVENT_TYPES = ENGAGEMENT_EVENTS + PAYMENT_EVENTS
PLAN_PRICE_USD = {"free": 0.0, "pro": 29.0, "team": 99.0}

MAX_VIDEO_MINUTES_PER_EVENT = 24 * 60
MAX_PAYMENT_USD = 10_000.0
