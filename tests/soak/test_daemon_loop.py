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
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.tags import SENSOR_NAME_TAG
from libfaketime import get_reload_information

from churn_assets.automation import RETRAIN_SENSOR
from churn_assets.incidents import TRIGGER_TAG
from churn_assets.settings import PROJECT_ROOT, TELEMETRY_OFF

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

START = dt.date(2026, 7, 1)
BROUGHT_UP_ON = dt.date(2026, 10, 30)
"""The platform is brought up on this (fake) morning, after its cron: history START .. the day before."""
DRIFT_DEMO_AT = dt.datetime.combine(BROUGHT_UP_ON, dt.time(9, 0), tzinfo=dt.UTC)
"""Later that morning a person runs the drift demo beside the daemon."""
NIGHTS = [dt.date(2026, 10, 31)]
"""Each night the cron loads the day before; the drift is still there, inside the cool-down."""
SENSOR_INTERVAL_S = 3
IDLE_TICKS = 2
DAY_TIMEOUT_S = 600
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class DaemonPlatform:
    """A platform with its own data dir and instance, driven only by the daemon and the CLI."""

    def __init__(self, root: Path):
        self.data_dir = root / "churnops"
        self.home = self.data_dir / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(PROJECT_ROOT / "dagster.yaml", self.home / "dagster.yaml")
        self.clock = FakeClock(root / "faketime")
        self.env = {
            **os.environ,
            **TELEMETRY_OFF,
            **self.clock.env(),
            "DAGSTER_HOME": str(self.home),
            "CHURNOPS_DATA_DIR": str(self.data_dir),
            "BENTOML_HOME": str(self.data_dir / "bentoml"),
            "CHURNOPS_START_DATE": START.isoformat(),
            "CHURNOPS_USERS": "400",
            "CHURNOPS_SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL_S),
            # One day of 400 users gives a realised ROC-AUC within about ±0.1 of the truth: only
            # drift, the episode under test, should fail as an error here.
            "CHURNOPS_MAX_AUC_DROP": "0.3",
        }
        self.env.pop("CHURNOPS_WAREHOUSE", None)
        self.daemon: subprocess.Popen | None = None
        self.processes: list[subprocess.Popen] = []
        self.workspace: Path | None = None
        self.instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def churnops(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name("churnops")), *args]
        return subprocess.run(
            command, cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, timeout=480, check=False
        )

    def _start(self, name: str, *command: str) -> subprocess.Popen:
        log = (self.data_dir / f"{name}.log").open("a")
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name(command[0])), *command[1:]],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start_code_server(self) -> None:
        """A code server of its own, as in production (``dagster api grpc``): one that the daemon
        manages is restarted whenever the daemon refreshes its workspace."""
        port = _free_port()
        self._start(
            "code_server",
            "dagster",
            "api",
            "grpc",
            "-m",
            "churn_assets.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        )
        health = [str(Path(sys.executable).with_name("dagster")), "api", "grpc-health-check", "-p", str(port)]
        deadline = time.monotonic() + 120
        while subprocess.run(health, env=self.env, capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the code server did not answer; see {self.data_dir}/code_server.log")
            time.sleep(1)
        self.workspace = self.data_dir / "workspace.yaml"
        self.workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: churn_assets\n"
        )

    def move_clock(self, when: dt.datetime) -> None:
        """Jumps the clock with the daemon stopped, as a night passes while nobody watches.

        The daemon's loops pace themselves by the wall clock, and a jump of hours under a running
        daemon stalls its threads; a daemon restarted after the jump resumes from what it stored
        in the instance (sensor cursors, ticks), as after any restart.
        """
        self._stop(self.daemon)
        self.clock.set(when)
        self.daemon = self._start("daemon", "dagster-daemon", "run", "-w", str(self.workspace))
        self.wait_for_tick("automation", after=when.timestamp())

    def _stop(self, process: subprocess.Popen | None) -> None:
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for process in reversed(self.processes):
            self._stop(process)

    def ticks(self, sensor: str) -> list:
        """The sensor's ticks, newest first, as the daemon stored them."""
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            if state.instigator_name == sensor:
                return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id))
        return []

    def sensors(self) -> list[str]:
        return [s.instigator_name for s in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)]

    def wait_for_tick(self, sensor: str, after: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(t.timestamp >= after and t.status != TickStatus.STARTED for t in self.ticks(sensor)):
            self._assert_daemon_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {sensor} tick after {after} within {timeout_s} s; see {self.data_dir}/daemon.log"
                )
            time.sleep(0.5)

    def wait_until_idle(self, since: float, timeout_s: float = DAY_TIMEOUT_S) -> None:
        """No run in flight, and since ``since`` and the last run the sensors have asked for nothing."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._assert_daemon_alive()
            time.sleep(1)
            if self.instance.get_runs(dg.RunsFilter(statuses=ACTIVE)):
                continue
            finished = [r.end_time for r in self.instance.get_run_records() if r.end_time]
            last_end = max(finished + [since])
            automation = [t for t in self.ticks("automation") if t.timestamp > last_end]
            retrain = [t for t in self.ticks(RETRAIN_SENSOR) if t.timestamp > last_end]
            done = [t for t in automation if t.status != TickStatus.STARTED]
            if len(done) >= IDLE_TICKS and retrain and all(t.status == TickStatus.SKIPPED for t in done):
                return
        raise TimeoutError(f"the platform did not settle within {timeout_s} s; see {self.data_dir}/daemon.log")

    def night(self, day: dt.date) -> None:
        """Moves the clock to just before the 01:00 cron on ``day``, lets it fire, and waits for the flow to settle."""
        self.move_clock(dt.datetime.combine(day, dt.time(0, 59, 50), tzinfo=dt.UTC))
        after = dt.datetime.combine(day, dt.time(1, 0, 5), tzinfo=dt.UTC)
        self.clock.set(after)
        self.wait_until_idle(since=after.timestamp())

    def _assert_daemon_alive(self) -> None:
        assert self.daemon is not None and self.daemon.poll() is None, (
            f"the daemon exited; see {self.data_dir}/daemon.log"
        )

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.data_dir / "warehouse.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()

    def materialized_partitions(self, asset: str) -> set[str]:
        return set(self.instance.get_materialized_partitions(dg.AssetKey.from_user_string(asset)))


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
