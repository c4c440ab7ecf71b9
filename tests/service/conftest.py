"""A real ``bentoml serve`` process over HTTP, started from the model the test graph exported."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from churn_assets.settings import PROJECT_ROOT

READY_TIMEOUT_S = 90
POLL_S = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(model_tag: str, data_dir: Path) -> Iterator[httpx.Client]:
    """``data_dir`` is the platform whose online features the service answers /predict_user from."""
    port = _free_port()
    env = {
        **os.environ,
        "CHURNOPS_BENTO_MODEL": model_tag,
        "CHURNOPS_SERVICE_WORKERS": "1",
        "CHURNOPS_DATA_DIR": str(data_dir),
        "CHURNOPS_SERVICE_POLL_SECONDS": str(POLL_S),
    }
    log = open(Path(os.environ["BENTOML_HOME"]).parent / f"service-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", "bento.service:ChurnService", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}; see {log.name}")
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready after {READY_TIMEOUT_S}s; see {log.name}")
            time.sleep(0.3)
        client.log_path = Path(log.name)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def exported(small_graph):
    platform, result = small_graph
    tag = result.asset_materializations_for_node("bento_model")[0].metadata["bento_model"].value
    return platform, tag


@pytest.fixture(scope="module")
def service(exported):
    platform, tag = exported
    with running_service(tag, platform.data_dir) as client:
        yield client


@pytest.fixture(scope="session")
def start_service():
    return running_service
