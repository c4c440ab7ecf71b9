"""The platform as its separate processes: a code server, the daemon, the webserver and the ``churnops`` CLI.

Nothing here evaluates a sensor or launches a run in the test's process: the test starts the
processes a deployment runs, then reads what they stored in the instance and the warehouse.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from churn_assets.automation import RETRAIN_SENSOR
from churn_assets.settings import PROJECT_ROOT, TELEMETRY_OFF

SENSOR_INTERVAL_S = 5
"""Short enough that a night settles in minutes; the daemon's ticks cost CPU (a quarter of a core at 3 s,
an eighth at 10 s) that the runs need on CI's two cores."""
IDLE_TICKS = 2
DAY_TIMEOUT_S = 600
READY_TIMEOUT_S = 120
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class PlatformProcesses:
    """A platform with its own data dir and instance, driven only by its processes and the CLI.

    ``instance_yaml`` becomes the instance's ``dagster.yaml``; ``env`` is what every process of
    the platform reads on top of the test's environment.
    """

    def __init__(self, root: Path, instance_yaml: Path, env: dict[str, str]):
        self.data_dir = root / "churnops"
        self.home = self.data_dir / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copy(instance_yaml, self.home / "dagster.yaml")
        self.env = {
            **os.environ,
            **TELEMETRY_OFF,
            "DAGSTER_HOME": str(self.home),
            "CHURNOPS_DATA_DIR": str(self.data_dir),
            "BENTOML_HOME": str(self.data_dir / "bentoml"),
            "CHURNOPS_USERS": "400",
            "CHURNOPS_SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL_S),
            # One day of 400 users gives a realised ROC-AUC within about ±0.1 of the truth: only
            # drift, the episode under test, should fail as an error here.
            "CHURNOPS_MAX_AUC_DROP": "0.3",
            **env,
        }
        self.env.pop("CHURNOPS_WAREHOUSE", None)
        self.daemon: subprocess.Popen | None = None
        self.processes: list[subprocess.Popen] = []
        self.workspace: Path | None = None
        self.instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))

    def churnops(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """A command as a person runs it beside the platform; ``env`` is this command's own.

        The time limit only stops a hung command. The two soak modules run side by side on CI's two
        cores, where a drift-demo was seen to take over 480 s."""
        command = [_bin("churnops"), *args]
        return subprocess.run(
            command,
            cwd=PROJECT_ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )

    def _start(self, name: str, *command: str) -> subprocess.Popen:
        log = (self.data_dir / f"{name}.log").open("a")
        process = subprocess.Popen(
            [_bin(command[0]), *command[1:]],
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
        port = free_port()
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
        health = [_bin("dagster"), "api", "grpc-health-check", "-p", str(port)]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while subprocess.run(health, env=self.env, capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the code server did not answer; see {self.data_dir}/code_server.log")
            time.sleep(1)
        self.workspace = self.data_dir / "workspace.yaml"
        self.workspace.write_text(
            f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: churn_assets\n"
        )

    def start_daemon(self) -> None:
        self.daemon = self._start("daemon", "dagster-daemon", "run", "-w", str(self.workspace))

    def restart_daemon(self) -> float:
        """Stops the daemon and starts a new one, which resumes from what the old one stored in the instance.

        Returns when the old one had stopped: every tick stamped later is the new daemon's. A tick
        the stop interrupted keeps its earlier stamp, even once the new daemon has closed it."""
        self._stop(self.daemon)
        stopped_at = time.time()
        self.start_daemon()
        return stopped_at

    def start_webserver(self) -> int:
        """The Dagster UI and its GraphQL API on a free port, once it answers."""
        port = free_port()
        self._start("webserver", "dagster-webserver", "-w", str(self.workspace), "-h", "127.0.0.1", "-p", str(port))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5):
                    return port
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the webserver did not answer; see {self.data_dir}/webserver.log") from None
                time.sleep(1)

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

    def _assert_daemon_alive(self) -> None:
        assert self.daemon is not None and self.daemon.poll() is None, (
            f"the daemon exited; see {self.data_dir}/daemon.log"
        )

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.data_dir / "warehouse.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()

    def materialized_partitions(self, asset: str) -> set[str]:
        return set(self.instance.get_materialized_partitions(dg.AssetKey.from_user_string(asset)))
