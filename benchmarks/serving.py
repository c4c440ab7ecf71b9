"""How fast the churn service answers, measured on loopback against a real ``bentoml serve``.

Measures, in one run: sequential p50/p99 latency of /predict; throughput and p50/p99 at a given
concurrency for /predict and for the same server's /livez (the framework's ceiling), and their
ratio; /predict_batch rows per second; and a bare in-process predict_proba as the floor.

The load comes from a minimal keep-alive HTTP/1.1 client on asyncio streams, so the client costs
far less CPU than the server and the two cores mostly measure the service.

Needs a model in the BentoML store: run ``make materialize`` (or ``make up``) first.
    uv run python benchmarks/serving.py [--data-dir .churnops] [--workers 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _load(port: int, request: bytes, concurrency: int, total: int) -> tuple[list[float], float]:
    """``total`` requests over ``concurrency`` keep-alive connections; latencies (s) and wall time."""
    latencies: list[float] = []
    per_connection = total // concurrency

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(per_connection):
            start = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if len(values) > 1 else values[0] * 1000


def _start_server(port: int, workers: int, env: dict) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("bentoml")), "serve", "bento.service:ChurnService", "--port", str(port)],
        cwd=ROOT,
        env={**env, "CHURNOPS_SERVICE_WORKERS": str(workers)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready = _request("/readyz", None)
    deadline = time.monotonic() + 90
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            if asyncio.run(_load(port, ready, 1, 1))[0]:
                print(f"server ready in {time.monotonic() - started:.1f}s ({workers} worker(s))")
                return process
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            time.sleep(0.2)
    process.kill()
    raise TimeoutError("service did not become ready")


def _sample_records(n: int) -> list[dict]:
    import bentoml

    from churn_assets.contract import FEATURE_COLUMNS

    snapshot = bentoml.models.get("churn-model:latest").custom_objects["latest_features"]
    rows = snapshot[list(FEATURE_COLUMNS)].head(n)
    return json.loads(rows.to_json(orient="records"))


def _in_process_floor(records: list[dict]) -> dict[str, float]:
    import bentoml
    import pandas as pd

    from churn_assets.contract import FEATURE_COLUMNS
    from churn_assets.serve.onnx import churn_probabilities, feeds, load_session

    model = bentoml.models.get("churn-model:latest")
    pipeline = bentoml.sklearn.load_model(model)
    session = load_session(model.custom_objects["onnx_model"])
    one = feeds(records[:1])
    frame = pd.DataFrame(records[:1])[list(FEATURE_COLUMNS)]
    timings = {}
    for name, call in (
        ("onnxruntime, 1 row (the service's path)", lambda: churn_probabilities(session, one)),
        ("sklearn pipeline, 1-row DataFrame", lambda: pipeline.predict_proba(frame)),
    ):
        call()
        start = time.perf_counter()
        for _ in range(300):
            call()
        timings[name] = (time.perf_counter() - start) / 300 * 1000
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".churnops"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8000, help="requests per concurrent measurement")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    data_dir = Path(args.data_dir).resolve()
    env = {**os.environ, "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(data_dir / "bentoml")), "BENTOML_DO_NOT_TRACK": "true"}
    os.environ.update(env)
    records = _sample_records(args.batch_size)
    if not records:
        print("no churn-model in the BentoML store: run `make materialize` first", file=sys.stderr)
        return 1

    port = _free_port()
    server = _start_server(port, args.workers, env)
    try:
        one = _request("/predict", json.dumps({"features": records[0]}).encode())
        livez = _request("/livez", None)
        batch = _request("/predict_batch", json.dumps({"records": records}).encode())
        asyncio.run(_load(port, one, args.concurrency, 800))

        sequential, _ = asyncio.run(_load(port, one, 1, 1000))
        results = {}
        for name, request in (("/predict", one), ("/livez", livez)):
            latencies, wall = asyncio.run(_load(port, request, args.concurrency, args.requests))
            results[name] = (len(latencies) / wall, _pct(latencies, 50), _pct(latencies, 99))
        batch_latencies, batch_wall = asyncio.run(_load(port, batch, 1, 50))
    finally:
        server.terminate()
        server.wait(timeout=20)
    floor = _in_process_floor(records)

    ratio = results["/predict"][0] / results["/livez"][0]
    rows_per_s = len(batch_latencies) * len(records) / batch_wall
    print(f"\nsequential /predict: p50 {_pct(sequential, 50):.2f} ms, p99 {_pct(sequential, 99):.2f} ms")
    print(f"concurrency {args.concurrency}, {args.requests} requests each:")
    for name, (rps, p50, p99) in results.items():
        print(f"  {name:<9} {rps:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    print(f"  /predict throughput is {ratio:.0%} of /livez (target >= 60%)")
    print(f"/predict_batch ({len(records)} records): {rows_per_s:,.0f} rows/s, p50 {_pct(batch_latencies, 50):.1f} ms per batch (target >= 100,000 rows/s)")
    for name, ms in floor.items():
        print(f"in-process predict_proba, {name}: {ms:.3f} ms")
    p99_c = results["/predict"][2]
    print(f"\ntargets: ratio {'met' if ratio >= 0.6 else 'MISSED'}, p99 at c={args.concurrency} {p99_c:.1f} ms "
          f"{'met' if p99_c < 10 else 'MISSED'} (< 10 ms), batch {'met' if rows_per_s >= 100_000 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
