"""``make up``: the whole graph as one named run, then every surface, on a screen or two of output.

The terminal gets one line per step (its time and the rows it wrote) and, once every server
answers, their addresses. Everything else goes to files under ``<data dir>/logs``: the run's full
event log is in the Dagster UI and in ``bring_up.log``, each server's output in its own file.
Each server runs in a process group of its own, so Ctrl+C stops exactly what ``make up`` started,
children of children included, and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import dagster as dg
from dagster._core.events import DagsterEventType

from churn_assets.settings import DBT_PROJECT_DIR, PROJECT_ROOT, Settings, Surfaces

BRING_UP_JOB = "bring_up"
TRIGGER_TAG = "churnops/trigger"
READY_TIMEOUT_S = 180
STOP_TIMEOUT_S = 10

bring_up_job = dg.define_asset_job(
    BRING_UP_JOB,
    selection=dg.AssetSelection.all(),
    description="The whole graph over a partition range in one run: what `make up` runs first on the "
    "configured history. Launch it with a range to rebuild everything; the daily automation keeps it current afterwards.",
)

QUIET_ENV = {
    # MLflow would describe the model's environment with `uv export` of this whole project (Dagster,
    # dbt and all) and warns when uv is not on the PATH; the packages the model imports are its environment.
    "MLFLOW_UV_AUTO_DETECT": "false",
}


def install_instance(settings: Settings) -> None:
    """The profile's instance yaml becomes DAGSTER_HOME's ``dagster.yaml`` before any Dagster process
    reads it: the local SQLite one, or production's PostgreSQL one."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(settings.dagster_instance_template, settings.dagster_home / "dagster.yaml")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass(frozen=True)
class Surface:
    """A server ``make up`` starts: how to start it, where it answers, and how to tell it is up."""

    key: str
    """What ``churnops start`` calls it."""
    name: str
    port: int
    ready_path: str
    command: tuple[str, ...] = ()
    directory: Path | None = None
    """A static site served from this process instead of a command."""
    note: str = ""


def surfaces(settings: Settings, where: Surfaces) -> list[Surface]:
    host = where.host
    return [
        Surface(
            "dagster",
            "Dagster UI",
            where.dagster_port,
            "/server_info",
            (_bin("dagster-webserver"), "-w", "workspace.yaml", "-h", host, "-p", str(where.dagster_port)),
            note="assets, lineage, checks; Runs lists this bring-up as bring_up",
        ),
        Surface("daemon", "Dagster daemon", 0, "", (_bin("dagster-daemon"), "run", "-w", "workspace.yaml")),
        Surface(
            "service",
            "Churn service",
            where.service_port,
            "/readyz",
            (_bin("bentoml"), "serve", "bento.service:ChurnService", "--host", host, "--port", str(where.service_port)),
            note="Swagger UI; GET /model says what is served",
        ),
        Surface(
            "mlflow",
            "MLflow",
            where.mlflow_port,
            "/health",
            (
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                settings.mlflow_tracking_uri,
                "--default-artifact-root",
                settings.mlflow_artifact_location,
                "--host",
                host,
                "--port",
                str(where.mlflow_port),
                "--workers",
                "1",
            ),
            note="runs, metrics and the registered model",
        ),
        Surface(
            "docs",
            "dbt docs",
            where.docs_port,
            "/index.html",
            directory=DBT_PROJECT_DIR / "target",
            note="every model and feature defined",
        ),
        Surface(
            "reports",
            "Drift reports",
            where.reports_port,
            "/",
            directory=settings.reports_dir,
            note="Evidently's report of each monitored day",
        ),
    ]


class _Progress:
    """Prints the run's steps as they finish, read from the instance's event log while the run goes on."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, out: TextIO, log: TextIO) -> None:
        self.instance, self.run_id, self.out, self.log = instance, run_id, out, log
        self.cursor: str | None = None
        self.started: dict[str, float] = {}
        self.wrote: dict[str, dict[str, list]] = {}
        """Per running step, per asset: [rows, materializations]; a range run materializes each day."""
        self.done = threading.Event()
        self.ticker = out.isatty()
        self.line_start = "\r\033[K" if self.ticker else ""

    def follow(self) -> None:
        while not self.done.wait(1):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, limit=500)
            for record in page.records:
                self._on(record.event_log_entry)
            self.cursor = page.cursor
            if not page.has_more:
                break
        if self.ticker and self.started:
            step, since = next(iter(self.started.items()))
            self.out.write(f"{self.line_start}  {step:<24} running {time.time() - since:5.0f} s")
            self.out.flush()

    def _on(self, entry) -> None:
        self.log.write(
            f"{dt.datetime.fromtimestamp(entry.timestamp):%H:%M:%S} {entry.step_key or '':<24} {entry.message}\n"
        )
        event = entry.dagster_event
        if event is None:
            return
        step = entry.step_key or ""
        if event.event_type == DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialization = event.event_specific_data.materialization
            rows = materialization.metadata.get("dagster/row_count")
            seen = self.wrote.setdefault(step, {}).setdefault(materialization.asset_key.path[-1], [None, 0])
            seen[0] = rows.value if rows is not None else seen[0]
            seen[1] += 1
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            took = entry.timestamp - self.started.pop(step, entry.timestamp)
            outcome = "" if event.event_type == DagsterEventType.STEP_SUCCESS else "FAILED  "
            wrote = ", ".join(_wrote(name, *seen) for name, seen in self.wrote.pop(step, {}).items())
            self.out.write(f"{self.line_start}  {step:<24} {took:6.1f} s  {outcome}{wrote}\n")
            self.out.flush()


def _wrote(name: str, rows: int | None, materializations: int) -> str:
    days = f" ({materializations} days)" if materializations > 1 else ""
    return f"{name} {rows:,} rows{days}" if rows is not None else f"{name}{days}"


def materialize_everything(
    settings: Settings, instance: dg.DagsterInstance, log_dir: Path
) -> dg.ExecuteInProcessResult:
    """The bring-up run: ``bring_up`` over the whole history, as one run the UI lists by name."""
    from dagster._core.utils import make_new_run_id

    from churn_assets.cli import QUIET_CONSOLE, quiet_stdout
    from churn_assets.definitions import defs

    run_id, out = make_new_run_id(), sys.stdout
    tags = {
        TRIGGER_TAG: "make up",
        "dagster/asset_partition_range_start": settings.start_date.isoformat(),
        "dagster/asset_partition_range_end": settings.history_end.isoformat(),
    }
    with open(log_dir / "bring_up.log", "w") as log, _stderr_into(log):
        progress = _Progress(instance, run_id, out, log)
        follower = threading.Thread(target=progress.follow, name="bring-up-progress", daemon=True)
        follower.start()
        try:
            with quiet_stdout():
                result = defs.resolve_job_def(BRING_UP_JOB).execute_in_process(
                    instance=instance, run_id=run_id, tags=tags, run_config=QUIET_CONSOLE, raise_on_error=False
                )
        finally:
            progress.done.set()
            follower.join()
    _file_under_the_code_location(instance, run_id)
    return result


def _file_under_the_code_location(instance: dg.DagsterInstance, run_id: str) -> None:
    """Gives the finished in-process run the origin a UI-launched run of ``bring_up`` would have.

    An in-process run has no code location, so the UI's Overview leaves it out and its Jobs page
    lists no run of ``bring_up``; this is the run-history migration Dagster itself uses to move
    runs between locations. Only a finished run is rewritten: a running one would write its old
    body back with its next status.
    """
    import yaml
    from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    (location,) = yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())["load_from"]
    module = location["python_module"]
    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=module["module_name"], working_directory=str(PROJECT_ROOT)
    )
    code_location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=module["location_name"])
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(code_location, SINGLETON_REPOSITORY_NAME), BRING_UP_JOB)
    instance.run_storage.replace_job_origin(instance.get_run_by_id(run_id), origin)


@contextlib.contextmanager
def _stderr_into(log: TextIO):
    """Everything written to stderr during the run, by libraries' loggers or child processes, goes to the log."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def write_dbt_docs(settings: Settings, log_dir: Path) -> bool:
    with open(log_dir / "dbt_docs.log", "w") as log:
        return (
            subprocess.run(
                [_bin("dbt"), "docs", "generate"],
                cwd=DBT_PROJECT_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **settings.subprocess_env()},
                check=False,
            ).returncode
            == 0
        )


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


class _Site(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A browser that closes the connection early is no error worth a traceback on the terminal."""


class Supervisor:
    """Starts the surfaces, waits until each answers, and stops every one of them (and their children)."""

    def __init__(self, settings: Settings, where: Surfaces, log_dir: Path) -> None:
        self.settings, self.where, self.log_dir = settings, where, log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: list[TextIO] = []
        self.sites: list[_Site] = []

    def start(self, chosen: list[Surface]) -> None:
        env = {**os.environ, **self.settings.subprocess_env(), **QUIET_ENV}
        for surface in chosen:
            if surface.directory is not None:
                surface.directory.mkdir(parents=True, exist_ok=True)
                handler = functools.partial(_QuietFiles, directory=str(surface.directory))
                site = _Site((self.where.host, surface.port), handler)
                threading.Thread(target=site.serve_forever, name=surface.name, daemon=True).start()
                self.sites.append(site)
                continue
            log = open(self.log_path(surface), "w")  # noqa: SIM115 - closed in stop(), once the child has ended
            self.logs.append(log)
            self.processes[surface.name] = subprocess.Popen(
                surface.command,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log_path(self, surface: Surface) -> Path:
        return self.log_dir / f"{surface.name.lower().replace(' ', '_')}.log"

    def wait_until_ready(self, chosen: list[Surface]) -> list[str]:
        """Every surface that did not answer in time or stopped, with where to read why."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = [s for s in chosen if s.ready_path and s.directory is None]
        failed = []
        while pending:
            for surface in list(pending):
                process = self.processes.get(surface.name)
                if process is not None and process.poll() is not None:
                    failed.append(
                        f"{surface.name} stopped (exit code {process.returncode}); see {self.log_path(surface)}"
                    )
                    pending.remove(surface)
                elif _answers(self.where.url(surface.port) + surface.ready_path):
                    pending.remove(surface)
            if time.monotonic() > deadline:
                failed += [f"{s.name} did not answer in {READY_TIMEOUT_S} s; see {self.log_path(s)}" for s in pending]
                break
            if pending:
                time.sleep(0.5)
        return failed

    def stopped(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def stop(self) -> None:
        """SIGTERM to every process group, SIGKILL to what is left after STOP_TIMEOUT_S."""
        for site in self.sites:
            site.shutdown()
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for log in self.logs:
            log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


class _Stop(Exception):
    pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_stop(signum, frame) -> None:
    """The first stop signal stops everything; later ones are ignored, so they cannot cut the stop
    short and leave surfaces running. One Ctrl+C under ``make up`` is two SIGINTs here: the
    terminal's, and the one ``uv run`` passes on."""
    for ignored in STOP_SIGNALS:
        signal.signal(ignored, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def serve_until_stopped(settings: Settings, keys: list[str] | None = None, banner: str = "") -> int:
    """Starts the chosen surfaces (all by default), prints their addresses, and keeps them up until Ctrl+C."""
    where = Surfaces.from_env()
    every = surfaces(settings, where)
    chosen = [s for s in every if not keys or s.key in keys]
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(settings, where, log_dir)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    try:
        print(f"starting {', '.join(s.name for s in chosen)} (logs in {log_dir})", flush=True)
        supervisor.start(chosen)
        failed = supervisor.wait_until_ready(chosen)
        if failed:
            print("\n".join(failed), file=sys.stderr)
            return 1
        print(banner + _addresses(settings, where, chosen), flush=True)
        reported: set[str] = set()
        while True:
            for name in set(supervisor.stopped()) - reported:
                reported.add(name)
                surface = next(s for s in chosen if s.name == name)
                print(
                    f"{name} stopped (exit code {supervisor.processes[name].returncode}); see {supervisor.log_path(surface)}",
                    flush=True,
                )
            time.sleep(1)
    except _Stop as stop:
        print(f"\n{stop}: stopping everything make up started ...", flush=True)
        return 0
    finally:
        supervisor.stop()
        print("stopped.", flush=True)


def _addresses(settings: Settings, where: Surfaces, chosen: list[Surface]) -> str:
    lines = ["", "churnops is up:"]
    for surface in chosen:
        if surface.port:
            url = where.url(surface.port) + (_experiment_page(settings) if surface.key == "mlflow" else "")
            note = surface.note
            if surface.directory is not None and not (surface.directory / surface.ready_path.lstrip("/")).exists():
                note = "nothing written yet (make docs writes the dbt docs; drift_report the reports)"
            lines.append(f"  {surface.name:<14} {url:<30} {note}")
    lines += [
        f"  {'Warehouse':<14} {settings.warehouse_path}",
        f"  {'Logs':<14} {settings.data_dir / 'logs'}",
        "",
        (
            "Ports: set CHURNOPS_DAGSTER_PORT, CHURNOPS_SERVICE_PORT, CHURNOPS_MLFLOW_PORT, CHURNOPS_DOCS_PORT or "
            "CHURNOPS_REPORTS_PORT (and CHURNOPS_HOST) before make up."
        ),
        "Ctrl+C stops everything make up started.",
    ]
    return "\n".join(lines)


def _experiment_page(settings: Settings) -> str:
    """MLflow opens on the platform's training runs, not on an empty default experiment."""
    from churn_assets.resources import build_resources

    return f"/#/experiments/{build_resources(settings)['registry'].activate()}"
