"""Every kind of bad delivery seen in the field, and what the platform does with it.

Each case delivers files over a warehouse that holds two good days, built through the marts. A
refused delivery stops at a named check or a named file, with a message saying what to fix, and
leaves the content of every raw, intermediate and mart table as it was. An accepted one is
loaded as the contract says.
"""

import datetime as dt
import shutil
from dataclasses import dataclass, field

import pytest

from churn_assets.ingest.schema import EVENTS_TABLE
from churn_assets.settings import LOW_VOLUME_TAG
from tests.conftest import EVENTS_HEADER, Platform

FIRST, SECOND = dt.date(2026, 7, 1), dt.date(2026, 7, 2)
USERS = ["1,2026-06-01,pro,US,organic", "2,2026-06-20,free,IN,social", "4,2026-07-02,pro,DE,organic"]
GOOD = {
    FIRST: [
        "1,1,login,2026-07-01 09:00:00,",
        "2,1,video_minutes,2026-07-01 09:30:00,12.5",
        "3,2,payment,2026-07-01 10:00:00,29",
    ],
    SECOND: [
        "11,1,login,2026-07-02 09:00:00,",
        "12,2,login,2026-07-02 11:00:00,",
        "13,4,lesson_view,2026-07-02 12:00:00,",
    ],
}
LAYERS = ("raw", "intermediate", "marts")


@dataclass(frozen=True)
class Delivery:
    events: bytes
    days: tuple[dt.date, dt.date] = (SECOND, SECOND)
    file_name: str = "events.csv"
    tags: dict[str, str] = field(default_factory=dict)
    refused_by: str | None = None
    """The check (or, for a file that cannot be read, the step) that stops it; None when accepted."""
    says: tuple[str, ...] = ()


def _csv(*rows: str) -> bytes:
    return ("\n".join([EVENTS_HEADER, *rows]) + "\n").encode()


CASES = {
    "an events file with only its header": Delivery(
        _csv(),
        days=(FIRST, SECOND),
        refused_by="events_delivery_volume",
        says=("2026-07-01 has 0 event(s), 2026-07-02 has 0 event(s)", f"{LOW_VOLUME_TAG}=true"),
    ),
    "a reloaded day that is now empty, said to be expected": Delivery(_csv(), tags={LOW_VOLUME_TAG: "true"}),
    "an event before its user signed up": Delivery(
        _csv(*GOOD[SECOND], "14,4,login,2026-07-01 23:00:00,"),
        days=(FIRST, SECOND),
        refused_by="events_not_before_signup",
        says=("column event_ts", "events.csv row 4"),
    ),
    "timestamps with a UTC offset": Delivery(_csv(*GOOD[SECOND], "14,2,login,2026-07-03T01:30:00+02:00,")),
    "an event id loaded before on another day": Delivery(
        _csv(*GOOD[SECOND], "1,2,login,2026-07-02 13:00:00,"),
        refused_by="events_ids_not_loaded_before",
        says=("column event_id", "events.csv row 4"),
    ),
    "a 0-byte Parquet file": Delivery(
        b"",
        file_name="events.parquet",
        refused_by="raw_events",
        says=("events.parquet is not a Parquet file",),
    ),
    "an unquoted decimal comma": Delivery(
        _csv(*GOOD[SECOND], "14,1,video_minutes,2026-07-02 13:00:00,2,4"),
        refused_by="raw_events",
        says=("events.csv line 5 has 6 fields where the header has 5", "Quote a value"),
    ),
    "events of a user missing from the users file": Delivery(
        _csv(*GOOD[SECOND], "14,3,login,2026-07-02 13:00:00,"),
        refused_by="events_known_users",
        says=("column user_id", "events.csv row 4"),
    ),
}


@pytest.fixture(scope="module")
def two_good_days(module_platform, module_source_files):
    module_platform.use_files(module_source_files.write(USERS, GOOD[FIRST] + GOOD[SECOND]))
    assert module_platform.materialize_data(FIRST, SECOND).success
    return module_platform


@pytest.fixture
def warehouse(two_good_days, tmp_path, monkeypatch, source_files):
    """A copy of the two good days, its own export folder holding the good users."""
    shutil.copytree(two_good_days.data_dir, tmp_path / "churnops")
    platform = Platform(tmp_path / "churnops", monkeypatch)
    platform.use_files(source_files.write(users=USERS))
    return platform


def _messages(result) -> str:
    failed_checks = [f"{c.check_name}: {c.description}" for c in result.get_asset_check_evaluations() if not c.passed]
    failures = [
        e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE" and e.step_failure_data.user_failure_data
    ]
    return "\n".join(failed_checks + failures)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_delivery_is_refused_by_name_or_loaded_as_the_contract_says(warehouse, source_files, case):
    delivery = CASES[case]
    before = warehouse.content_hashes(*LAYERS)
    (source_files.root / "events.csv").unlink(missing_ok=True)
    (source_files.root / delivery.file_name).write_bytes(delivery.events)

    result = warehouse.materialize(*delivery.days, "group:ingest or group:transform", tags=delivery.tags)

    if delivery.refused_by is None:
        assert result.success, _messages(result)
        ACCEPTED[case](warehouse)
        return
    assert not result.success
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed_steps == ["raw_events"], "the graph stops at the events, before any dbt model"
    messages = _messages(result)
    assert delivery.refused_by in messages or delivery.refused_by in failed_steps
    for fragment in delivery.says:
        assert fragment in messages
    assert "Traceback" not in messages
    assert warehouse.content_hashes(*LAYERS) == before, "a refused delivery changes no table"


def _day_counts(platform, day: dt.date) -> tuple[int, int, int]:
    return tuple(
        platform.query(f"SELECT count(*) FROM {table} WHERE {column} = DATE '{day}'")[0][0]
        for table, column in (
            (EVENTS_TABLE, "CAST(event_ts AS DATE)"),
            ("intermediate.int_user_daily_activity", "activity_date"),
            ("marts.fct_user_features", "snapshot_date"),
        )
    )


def _empty_day_is_gone_from_every_layer(platform):
    assert _day_counts(platform, SECOND) == (0, 0, 0), "raw events, activity and features of 07-02"
    assert _day_counts(platform, FIRST) == (3, 2, 1), "07-01 is untouched (user 2 only paid: not active)"


def _offset_event_counts_on_its_utc_day(platform):
    assert platform.query(f"SELECT event_ts FROM {EVENTS_TABLE} WHERE event_id = 14") == [
        (dt.datetime(2026, 7, 2, 23, 30),)
    ]
    activity = "SELECT engagement_events FROM intermediate.int_user_daily_activity WHERE user_id = 2 AND activity_date = DATE '2026-07-02'"
    assert platform.query(activity) == [(2,)], "the 01:30+02:00 login is Bo's second on 07-02 UTC"


ACCEPTED = {
    "a reloaded day that is now empty, said to be expected": _empty_day_is_gone_from_every_layer,
    "timestamps with a UTC offset": _offset_event_counts_on_its_utc_day,
}
