"""The self-driving loop under the real daemon, over two days of an accelerated clock.

Nothing here evaluates a sensor by hand: ``dagster-daemon run``, against a code server of its own
(``dagster api grpc``), runs the automation and retrain sensors and launches every run, as under
``make up``. Every process of the platform reads one fake wall clock (libfaketime, an offset in a
file), so the test moves the platform to the next night and the daily cron loads the new day by
itself. The morning after the bring-up, ``churnops drift-demo`` runs beside the daemon, as a
person would run it in a second terminal.
The instance, the warehouse and the incident log are then read to see what really happened.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.tags import SENSOR_NAME_TAG
from libfaketime import get_reload_information

from churn_assets.automation import RETRAIN_SENSOR
from churn_assets.incidents import TRIGGER_TAG
from churn_assets.settings import PROJECT_ROOT
from tests.soak.harness import PlatformProcesses

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

START = dt.date(2026, 7, 1)
BROUGHT_UP_ON = dt.date(2026, 10, 30)
"""The platform is brought up on this (fake) morning, after its cron: history START .. the day before."""
DRIFT_DEMO_AT = dt.datetime.combine(BROUGHT_UP_ON, dt.time(9, 0), tzinfo=dt.UTC)
"""Later that morning a person runs the drift demo beside the daemon."""
NIGHTS = [dt.date(2026, 10, 31)]
"""Each night the cron loads the day before; the drift is still there, inside the cool-down."""


class FakeClock:
    """The platform's clock: a libfaketime offset in a file every platform process re-reads."""

    def __init__(self, path: Path):
        self.path = path
        self.set(dt.datetime.combine(BROUGHT_UP_ON, dt.time(1, 30), tzinfo=dt.UTC))

    def set(self, when: dt.datetime) -> None:
        offset = int((when - dt.datetime.now(dt.UTC)).total_seconds())
        self.path.write_text(f"{offset:+d}\n")

    def env(self) -> dict[str, str]:
        """Only the wall clock is faked: timeouts and waits (threads, gRPC) run on the real
        monotonic clock, which the kernel also uses to end them; faking it stalls the daemon."""
        _, preload = get_reload_information()
        return {
            **preload,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_DID_REEXEC": "true",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_CACHE_DURATION": "1",
        }


class DaemonPlatform(PlatformProcesses):
    """A SQLite platform (``make up``'s dagster.yaml) on a clock the test moves."""

    def __init__(self, root: Path):
        self.clock = FakeClock(root / "faketime")
        super().__init__(
            root, PROJECT_ROOT / "dagster.yaml", {**self.clock.env(), "CHURNOPS_START_DATE": START.isoformat()}
        )

    def move_clock(self, when: dt.datetime) -> None:
        """Jumps the clock with the daemon stopped, as a night passes while nobody watches.

        The daemon's loops pace themselves by the wall clock, and a jump of hours under a running
        daemon stalls its threads; a daemon restarted after the jump resumes from what it stored
        in the instance (sensor cursors, ticks), as after any restart.
        """
        self._stop(self.daemon)
        self.clock.set(when)
        self.start_daemon()
        self.wait_for_tick("automation", after=when.timestamp())

    def night(self, day: dt.date) -> None:
        """Moves the clock to just before the 01:00 cron on ``day``, lets it fire, and waits for the flow to settle."""
        self.move_clock(dt.datetime.combine(day, dt.time(0, 59, 50), tzinfo=dt.UTC))
        after = dt.datetime.combine(day, dt.time(1, 0, 5), tzinfo=dt.UTC)
        self.clock.set(after)
        self.wait_until_idle(since=after.timestamp())


@pytest.fixture(scope="module")
def lived(tmp_path_factory: pytest.TempPathFactory):
    """Bring-up, the daemon, the drift demo beside it that morning, and the next night."""
    platform = DaemonPlatform(tmp_path_factory.mktemp("soak"))
    bring_up = platform.churnops("materialize")
    assert bring_up.returncode == 0, bring_up.stdout + bring_up.stderr
    platform.bring_up_run = platform.instance.get_run_records(limit=1)[0].dagster_run.run_id
    demo = None
    try:
        platform.start_code_server()
        platform.move_clock(DRIFT_DEMO_AT)
        demo = platform.churnops("drift-demo")
        platform.wait_until_idle(since=DRIFT_DEMO_AT.timestamp())
        for night in NIGHTS:
            platform.night(night)
    finally:
        platform.stop()
    yield platform, demo


def test_every_night_the_new_day_flows_from_raw_data_to_scores_and_drift(lived):
    platform, _ = lived
    loaded = [(night - dt.timedelta(days=1)).isoformat() for night in NIGHTS]
    for asset in (
        "raw_events",
        "staging/stg_events",
        "marts/fct_user_features",
        "churn_scores",
        "feature_drift",
        "drift_report",
    ):
        assert set(loaded) <= platform.materialized_partitions(asset), asset
    for table, column in (
        ("raw.events", "CAST(event_ts AS DATE)"),
        ("marts.fct_user_features", "snapshot_date"),
        ("scores.churn_scores", "snapshot_date"),
        ("monitor.feature_drift", "snapshot_date"),
    ):
        days = {row[0].isoformat() for row in platform.query(f"SELECT DISTINCT {column} FROM {table}")}
        assert set(loaded) <= days, table
    ((users, scored),) = platform.query(
        f"SELECT count(DISTINCT f.user_id), count(DISTINCT s.user_id) FROM marts.fct_user_features f "
        f"LEFT JOIN scores.churn_scores s USING (user_id, snapshot_date) WHERE snapshot_date = DATE '{loaded[-1]}'"
    )
    assert users > 100 and scored == users


def test_the_drift_episode_gives_exactly_one_retrain_and_one_gate_decision(lived):
    platform, demo = lived
    assert demo.returncode == 0, demo.stdout + demo.stderr
    retrains = platform.instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: RETRAIN_SENSOR}))
    assert len(retrains) == 1, [r.run_id for r in retrains]
    (retrain,) = retrains
    assert retrain.status == dg.DagsterRunStatus.SUCCESS
    assert retrain.tags[TRIGGER_TAG].startswith("feature_drift:")
    records = platform.instance.fetch_materializations(dg.AssetKey("production_model"), limit=100).records
    gates = [r for r in records if r.run_id != platform.bring_up_run]
    assert [g.run_id for g in gates] == [retrain.run_id], "one gate decision, in the retrain run"
    decision = gates[0].asset_materialization.metadata["decision"].value
    assert f"gate: {decision} version" in demo.stdout


def test_the_drift_check_kept_failing_after_the_retrain_without_a_second_one(lived):
    platform, _ = lived
    evaluations = platform.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("feature_drift"), "feature_drift_below_threshold"), limit=50
    )
    (retrain,) = platform.instance.get_run_records(dg.RunsFilter(tags={SENSOR_NAME_TAG: RETRAIN_SENSOR}))
    after = [
        e
        for e in evaluations
        if e.event
        and e.event.timestamp > retrain.create_timestamp.timestamp()
        and isinstance(e.evaluation, AssetCheckEvaluation)
        and not e.evaluation.passed
    ]
    assert after, "the last night's drift check failed again, inside the cool-down"
    last = next(t for t in platform.ticks(RETRAIN_SENSOR) if t.status == TickStatus.SKIPPED)
    assert "within the 24 h cool-down" in last.skip_reason


def test_no_sensor_tick_errored_and_no_run_failed(lived):
    platform, _ = lived
    assert {"automation", RETRAIN_SENSOR, "record_failed_runs"} <= set(platform.sensors())
    for sensor in platform.sensors():
        ticks = platform.ticks(sensor)
        assert ticks, sensor
        errors = [t.error.to_string() for t in ticks if t.status == TickStatus.FAILURE]
        assert errors == [], sensor
    failed = platform.instance.get_runs(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED])
    )
    assert failed == []


def test_the_incident_log_names_exactly_the_retrain_that_ran(lived):
    platform, _ = lived
    (retrain,) = platform.instance.get_runs(dg.RunsFilter(tags={SENSOR_NAME_TAG: RETRAIN_SENSOR}))
    lines = (platform.data_dir / "logs" / "incidents.log").read_text().splitlines()
    assert [line.split(" ", 3)[1:3] for line in lines] == [["retrain", "run"], ["retrain", "run"]]
    assert all(retrain.run_id in line for line in lines)
    assert ": started: feature_drift:" in lines[0]
    assert ": gate " in lines[1]
