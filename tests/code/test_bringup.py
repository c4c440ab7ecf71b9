"""`make up`'s surfaces: they answer where the addresses say, and Ctrl+C stops every process started."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import dagster as dg
import httpx
import psutil
import pytest

from churn_assets.bringup import BRING_UP_JOB, _file_under_the_code_location, _wrote
from churn_assets.definitions import defs
from churn_assets.settings import PROJECT_ROOT

ADDRESS = re.compile(r"^  (Dagster UI|Churn service|MLflow|dbt docs|Drift reports) +(http://\S+)", re.MULTILINE)


def test_the_bring_up_run_is_a_named_job_over_every_asset():
    job = defs.resolve_job_def(BRING_UP_JOB)
    assert job.asset_layer.selected_asset_keys == {spec.key for spec in defs.resolve_all_asset_specs()}


def test_a_step_line_names_each_asset_once_with_its_rows_and_days():
    assert _wrote("raw_events", 49_976, 153) == "raw_events 49,976 rows (153 days)"
    assert _wrote("churn_model", None, 1) == "churn_model"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Output:
    """The process's output as it comes, read by a thread so the test can wait for a line without blocking."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, marker: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while not any(marker in line for line in list(self.lines)):
            if time.monotonic() > deadline or not self.reader.is_alive():
                raise AssertionError(f"no {marker!r} after {timeout_s} s; output so far:\n{self.text}")
            time.sleep(0.5)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


MAKEFILE_RUN = [shutil.which("uv") or str(PROJECT_ROOT / ".tools" / "bin" / "uv"), "run", "--frozen", "--quiet"]
"""How the Makefile runs churnops (``make up``): uv run passes Ctrl+C on to churnops, which the
terminal has already signalled, so churnops sees it twice."""


@pytest.mark.slow
def test_every_surface_answers_at_its_address_and_ctrl_c_stops_every_process(small_graph):
    platform, _ = small_graph
    dagster, service, mlflow, docs, reports = _free_ports(5)
    env = {
        **os.environ,
        "CHURNOPS_DATA_DIR": str(platform.data_dir),
        "DAGSTER_HOME": str(platform.data_dir / "dagster_home"),
        "BENTOML_HOME": str(platform.settings.bentoml_home),
        "CHURNOPS_DAGSTER_PORT": str(dagster),
        "CHURNOPS_SERVICE_PORT": str(service),
        "CHURNOPS_MLFLOW_PORT": str(mlflow),
        "CHURNOPS_DOCS_PORT": str(docs),
        "CHURNOPS_REPORTS_PORT": str(reports),
    }
    up = subprocess.Popen(
        [*MAKEFILE_RUN, "churnops", "start"],
        cwd=PROJECT_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        output = _Output(up)
        addresses = dict(ADDRESS.findall(output.wait_for("Ctrl+C stops everything", timeout_s=300)))
        started = psutil.Process(up.pid).children(recursive=True)
        assert set(addresses) == {"Dagster UI", "Churn service", "MLflow", "dbt docs", "Drift reports"}
        assert addresses["Churn service"] == f"http://127.0.0.1:{service}"
        assert httpx.get(f"{addresses['Dagster UI']}/server_info").status_code == 200
        assert httpx.get(f"{addresses['Churn service']}/model").json()["model_version"] >= 1
        assert httpx.get(f"http://127.0.0.1:{mlflow}/health").status_code == 200
        assert addresses["MLflow"].startswith(f"http://127.0.0.1:{mlflow}/#/experiments/")
        assert httpx.get(addresses["Drift reports"]).status_code == 200
        assert len(started) >= 5

        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(timeout=60) == 0
        output.reader.join(timeout=10)
        assert "stopped." in output.text
        time.sleep(1)
        assert [p.pid for p in started if _alive(p)] == []
    finally:
        for process in [psutil.Process(up.pid), *started] if up.poll() is None else started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_the_bring_up_run_is_filed_under_the_code_location_like_a_ui_launched_run():
    """So the UI's Overview timeline and the bring_up job's page list it."""

    @dg.asset
    def one() -> int:
        return 1

    instance = dg.DagsterInstance.ephemeral()
    run_id = dg.materialize([one], instance=instance).run_id

    _file_under_the_code_location(instance, run_id)

    run = instance.get_run_by_id(run_id)
    assert run.remote_job_origin.job_name == BRING_UP_JOB
    assert run.remote_job_origin.repository_origin.get_label() == "__repository__@churn_assets"
    assert run.tags[".dagster/repository"] == "__repository__@churn_assets"
