"""What a one-asset run launched from the Dagster UI costs beyond its step.

Starts the Dagster webserver and daemon (``churnops start dagster daemon``) on a platform whose
graph has run, then materializes one asset at a time through the same GraphQL mutation the UI's
"Materialize" button sends, and reads each run's event log: from the click to the run being
dequeued, to its process starting, to the definitions being loaded, to the step, to the end.
The overhead is the run's wall time (click to done) divided by its step's time.

    uv run python benchmarks/run_launch.py [--data-dir .churnops] [--asset high_risk_users] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = """mutation($params: ExecutionParams!) { launchPipelineExecution(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout_s} s")


def _launch(webserver: str, asset: str) -> str:
    params = {
        "selector": {
            "repositoryLocationName": "churn_assets",
            "repositoryName": "__repository__",
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [asset]}],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "executionMetadata": {"tags": []},
    }
    answer = httpx.post(
        f"{webserver}/graphql", json={"query": LAUNCH, "variables": {"params": params}}, timeout=60
    ).json()
    launched = answer["data"]["launchPipelineExecution"]
    if "run" not in launched:
        raise RuntimeError(launched)
    return launched["run"]["runId"]


def _timeline(instance, run_id: str, clicked: float, done: float) -> dict[str, float]:
    """Seconds spent in each phase of one run, from its event log."""
    first: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        key = event.event_type_value if event else ""
        if key == "ENGINE_EVENT" and "Started process for run" in entry.message:
            key = "PROCESS_STARTED"
        first.setdefault(key, entry.timestamp)
    return {
        "click to dequeued": first["PIPELINE_STARTING"] - clicked,
        "run process start": first["PROCESS_STARTED"] - first["PIPELINE_STARTING"],
        "definitions load": first["PIPELINE_START"] - first["PROCESS_STARTED"],
        "step": first["STEP_SUCCESS"] - first["STEP_START"],
        "wall": done - clicked,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".churnops"))
    parser.add_argument("--asset", default="high_risk_users")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    port = _free_port()
    env = {
        **os.environ,
        "CHURNOPS_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(data_dir / "dagster_home"),
        "CHURNOPS_DAGSTER_PORT": str(port),
    }
    os.environ.update(env)
    import dagster as dg

    surfaces = subprocess.Popen(
        [str(Path(sys.executable).with_name("churnops")), "start", "dagster", "daemon"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    webserver = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{webserver}/server_info")
        instance = dg.DagsterInstance.get()
        phases = []
        for _ in range(args.runs):
            clicked = time.time()
            run_id = _launch(webserver, args.asset)
            while not (run := instance.get_run_by_id(run_id)).is_finished:
                time.sleep(0.2)
            if run.status != dg.DagsterRunStatus.SUCCESS:
                raise RuntimeError(f"run {run_id} ended {run.status.value}")
            phases.append(_timeline(instance, run_id, clicked, time.time()))
            print(
                "  ".join(f"{name} {seconds:5.1f} s" for name, seconds in phases[-1].items())
                + f"  wall/step {phases[-1]['wall'] / phases[-1]['step']:.1f}",
                flush=True,
            )
    finally:
        os.killpg(surfaces.pid, signal.SIGINT)
        surfaces.wait(timeout=60)
    median = {name: statistics.median(p[name] for p in phases) for name in phases[0]}
    print(
        f"\n{args.asset}, median of {args.runs} UI-style launches: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in median.items())
        + f"; run wall time / step time {median['wall'] / median['step']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
