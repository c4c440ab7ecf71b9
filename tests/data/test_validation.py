"""Bad raw data is stopped at the ingest checks with a message a person can act on, and nothing is lost."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from churn_assets.ingest.schema import EVENTS_TABLE, USERS_TABLE
from churn_assets.settings import LOW_VOLUME_TAG

DAY = dt.date(2026, 7, 1)
GOOD_USERS = ["1,2026-06-01,pro,US,organic", "2,2026-06-20,free,IN,social", "4,2026-07-02,pro,DE,organic"]
GOOD_EVENTS = [
    "1,1,login,2026-07-01 09:00:00,",
    "2,1,video_minutes,2026-07-01 09:30:00,12.5",
    "3,2,payment,2026-07-01 10:00:00,29",
]
EVENTS_NO_VALUE = "event_id,user_id,event_type,event_ts"


def _rejected(result, asset: str):
    """The failed check evaluations of ``asset``, after asserting the run stopped there."""
    assert not result.success
    failed_steps = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed_steps == [asset]
    return [c for c in result.get_asset_check_evaluations() if c.asset_key.to_user_string() == asset and not c.passed]


@pytest.fixture
def loaded(platform, source_files):
    """A platform whose raw tables hold one good day."""
    platform.use_files(source_files.write(GOOD_USERS, GOOD_EVENTS))
    assert platform.materialize(DAY, DAY, "group:ingest").success
    return platform


EVENT_CASES = {
    "missing column": (
        EVENTS_NO_VALUE,
        ["1,1,login,2026-07-01 09:00:00"],
        "events_column_types",
        ["missing required column(s): value"],
    ),
    "unparseable timestamp": (
        None,
        ["1,1,login,2026-07-01 09:00:00,", "2,1,login,yesterday,"],
        "events_column_types",
        ["column event_ts", "events.csv row 2", "'yesterday'"],
    ),
    "text in a number column": (
        None,
        ["1,one,login,2026-07-01 09:00:00,"],
        "events_column_types",
        ["column user_id", "events.csv row 1", "'one'"],
    ),
    "missing user": (
        None,
        ["1,1,login,2026-07-01 09:00:00,", "2,,login,2026-07-01 09:00:00,"],
        "events_keys_not_null",
        ["user_id", "events.csv row 2"],
    ),
    "user not in the users file": (
        None,
        ["1,1,login,2026-07-01 09:00:00,", "2,3,login,2026-07-01 09:00:00,"],
        "events_known_users",
        ["column user_id", "events.csv row 2"],
    ),
    "event before its user signed up": (
        None,
        ["1,1,login,2026-07-01 09:00:00,", "2,4,login,2026-07-01 23:59:59,"],
        "events_not_before_signup",
        ["column event_ts", "events.csv row 2"],
    ),
    "unknown event type": (
        None,
        ["1,1,logn,2026-07-01 09:00:00,"],
        "events_known_types",
        ["column event_type", "events.csv row 1"],
    ),
    "duplicate event id": (
        None,
        ["7,1,login,2026-07-01 09:00:00,", "7,2,login,2026-07-01 10:00:00,"],
        "events_unique_ids",
        ["column event_id", "events.csv row 1", "events.csv row 2"],
    ),
    "timestamp in the future": (
        None,
        ["1,1,login,2099-07-01 09:00:00,"],
        "events_not_in_future",
        ["column event_ts", "events.csv row 1"],
    ),
    "negative minutes": (
        None,
        ["1,1,video_minutes,2026-07-01 09:00:00,-5"],
        "events_values_in_range",
        ["column value", "events.csv row 1"],
    ),
    "not a number": (
        None,
        ["1,1,video_minutes,2026-07-01 09:00:00,nan"],
        "events_values_in_range",
        ["column value", "events.csv row 1"],
    ),
    "payment without amount": (
        None,
        ["1,1,payment,2026-07-01 09:00:00,"],
        "events_values_in_range",
        ["column value", "events.csv row 1"],
    ),
}


@pytest.mark.parametrize("case", EVENT_CASES, ids=list(EVENT_CASES))
def test_bad_events_are_rejected_with_the_column_and_rows_named(loaded, source_files, case):
    header, rows, rule, fragments = EVENT_CASES[case]
    before = loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {EVENTS_TABLE} ORDER BY event_id")
    source_files.write(events=rows, **({"events_header": header} if header else {}))

    failed = _rejected(loaded.materialize(DAY, DAY, "raw_events"), "raw_events")

    messages = {c.check_name: c.description for c in failed}
    assert rule in messages, f"{rule} should fail, failed: {messages}"
    for fragment in fragments:
        assert fragment in messages[rule]
    after = loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {EVENTS_TABLE} ORDER BY event_id")
    assert after == before, "the last good events must survive a rejected load"


def test_an_event_id_already_loaded_for_another_day_is_rejected_and_a_reload_of_its_own_day_is_not(
    loaded, source_files
):
    next_day = DAY + dt.timedelta(days=1)
    source_files.write(events=[*GOOD_EVENTS, "1,2,login,2026-07-02 08:00:00,"])

    failed = _rejected(loaded.materialize(next_day, next_day, "raw_events"), "raw_events")
    message = {c.check_name: c.description for c in failed}["events_ids_not_loaded_before"]
    assert "column event_id" in message and "events.csv row 4" in message
    assert loaded.materialize(DAY, DAY, "raw_events").success, "reloading 07-01 replaces the id's own day"


USER_CASES = {
    "unknown plan": (["1,2026-06-01,gold,US,organic"], "users_known_plans", ["column plan", "users.csv row 1"]),
    "duplicate user": (
        ["1,2026-06-01,pro,US,organic", "1,2026-06-02,free,US,organic"],
        "users_unique_ids",
        ["column user_id", "users.csv row 2"],
    ),
    "impossible date": (
        ["1,2026-13-01,pro,US,organic"],
        "users_column_types",
        ["column signup_date", "users.csv row 1", "'2026-13-01'"],
    ),
    "signup in the future": (
        ["1,2099-01-01,pro,US,organic"],
        "users_signup_not_in_future",
        ["column signup_date", "users.csv row 1"],
    ),
}


@pytest.mark.parametrize("case", USER_CASES, ids=list(USER_CASES))
def test_bad_users_are_rejected_with_the_column_and_rows_named(loaded, source_files, case):
    rows, rule, fragments = USER_CASES[case]
    before = loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {USERS_TABLE} ORDER BY user_id")
    source_files.write(users=rows)

    failed = _rejected(loaded.materialize(DAY, DAY, "raw_users"), "raw_users")

    messages = {c.check_name: c.description for c in failed}
    assert rule in messages, f"{rule} should fail, failed: {messages}"
    for fragment in fragments:
        assert fragment in messages[rule]
    assert loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {USERS_TABLE} ORDER BY user_id") == before


def test_the_run_failure_says_nothing_was_published(loaded, source_files):
    source_files.write(events=["1,1,logn,2026-07-01 09:00:00,"])
    result = loaded.materialize(DAY, DAY, "raw_events")
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.user_failure_data.description
    assert "nothing was published" in message
    assert "events_known_types" in message


def test_a_missing_source_file_is_named(platform, source_files):
    platform.use_files(source_files.write(users=GOOD_USERS))
    result = platform.materialize(DAY, DAY, "raw_events")
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no events file" in failure.step_failure_data.user_failure_data.description


UNREADABLE_FILES = {
    "a 0-byte Parquet file": ("events.parquet", b"", ["events.parquet is not a Parquet file"]),
    "a 0-byte CSV file": ("events.csv", b"", ["events.csv is empty"]),
    "an unquoted decimal comma": (
        "events.csv",
        b"event_id,user_id,event_type,event_ts,value\n1,1,login,2026-07-01 09:00:00,\n2,1,video_minutes,2026-07-01 09:30:00,2,4\n",
        [
            "events.csv line 3 has 6 fields where the header has 5",
            "2,1,video_minutes,2026-07-01 09:30:00,2,4",
            "Quote a value",
        ],
    ),
}


@pytest.mark.parametrize("case", UNREADABLE_FILES, ids=list(UNREADABLE_FILES))
def test_an_unreadable_file_is_named_with_what_to_fix_and_nothing_is_loaded(loaded, source_files, case):
    name, content, fragments = UNREADABLE_FILES[case]
    before = loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {EVENTS_TABLE} ORDER BY event_id")
    (source_files.root / "events.csv").unlink()
    (source_files.root / name).write_bytes(content)

    result = loaded.materialize(DAY, DAY, "raw_events")

    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    for fragment in fragments:
        assert fragment in description
    assert loaded.query(f"SELECT * EXCLUDE (_loaded_at) FROM {EVENTS_TABLE} ORDER BY event_id") == before


def test_timestamps_with_an_offset_are_stored_as_the_utc_time_they_denote(platform, source_files):
    platform.use_files(
        source_files.write(
            GOOD_USERS,
            [
                "1,1,login,2026-07-02T01:30:00+02:00,",
                "2,1,login,2026-07-02 23:30:00-0100,",
                "3,1,login,2026-07-02 12:00:00Z,",
                "4,1,login,2026-07-02 12:00:00,",
            ],
        )
    )

    assert platform.materialize(dt.date(2026, 7, 1), dt.date(2026, 7, 3), "group:ingest").success

    assert platform.query(f"SELECT event_id, event_ts FROM {EVENTS_TABLE} ORDER BY event_id") == [
        (1, dt.datetime(2026, 7, 1, 23, 30)),
        (2, dt.datetime(2026, 7, 3, 0, 30)),
        (3, dt.datetime(2026, 7, 2, 12, 0)),
        (4, dt.datetime(2026, 7, 2, 12, 0)),
    ]


@pytest.mark.parametrize("accepted_by", ["run tag", "setting"])
def test_an_empty_delivery_is_stopped_unless_the_operator_says_it_is_expected(loaded, source_files, accepted_by):
    raw_events = f"SELECT * EXCLUDE (_loaded_at) FROM {EVENTS_TABLE} ORDER BY event_id"
    before = loaded.query(raw_events)
    source_files.write(events=[])

    failed = _rejected(loaded.materialize(DAY, DAY, "raw_events"), "raw_events")

    message = {c.check_name: c.description for c in failed}["events_delivery_volume"]
    assert "2026-07-01 has 0 event(s)" in message and f"{LOW_VOLUME_TAG}=true" in message
    assert loaded.query(raw_events) == before

    if accepted_by == "setting":
        loaded.configure(CHURNOPS_MIN_DELIVERY_RATIO="0")
    tags = {LOW_VOLUME_TAG: "true"} if accepted_by == "run tag" else None
    assert loaded.materialize(DAY, DAY, "raw_events", tags=tags).success
    assert loaded.query(raw_events) == []


def test_a_day_far_below_the_usual_volume_is_stopped(loaded, source_files):
    loaded.configure(CHURNOPS_MIN_DELIVERY_RATIO="0.5")
    next_day = DAY + dt.timedelta(days=1)
    source_files.write(events=[*GOOD_EVENTS, "4,1,login,2026-07-02 09:00:00,"])

    failed = _rejected(loaded.materialize(next_day, next_day, "raw_events"), "raw_events")

    message = {c.check_name: c.description for c in failed}["events_delivery_volume"]
    assert "2026-07-02 has 1 event(s)" in message
    assert "the median of the 28 days before is 3" in message and "at least 50% of it" in message


def test_the_cli_says_what_to_fix_and_accepts_a_run_tag(tmp_path, source_files):
    source_files.write(GOOD_USERS, [])
    env = {
        **os.environ,
        "CHURNOPS_SOURCE": "files",
        "CHURNOPS_SOURCE_DIR": str(source_files.root),
        "CHURNOPS_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_HOME": str(tmp_path),
    }
    command = [str(Path(sys.executable).with_name("churnops")), "materialize", "--start", str(DAY), "--end", str(DAY)]

    # dbt runs too (stg_users), and its log must not push the message down.
    refused = subprocess.run(
        [*command, "--select", "group:ingest or group:transform"], env=env, capture_output=True, text=True, check=False
    )
    accepted = subprocess.run(
        [*command, "--select", "group:ingest", "--tag", f"{LOW_VOLUME_TAG}=true"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert refused.returncode == 1
    first_lines = refused.stdout.splitlines()[:3]
    assert first_lines[1].startswith("FAILED CHECK raw_events.events_delivery_volume: 2026-07-01 has 0 event(s)")
    assert (
        first_lines[2]
        == "FAILED STEP raw_events: raw_events rejected; nothing was published and the previous tables are unchanged."
    )
    assert "Traceback" not in refused.stdout + refused.stderr
    assert accepted.returncode == 0 and "run succeeded" in accepted.stdout
