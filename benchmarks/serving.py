"""How fast the churn service answers, measured on loopback against a real ``bentoml serve``.

Measures, in one run: sequential p50/p99 latency of /predict; throughput and p50/p99 at a given
concurrency for /predict and for the same server's /livez (the framework's ceiling), and their
ratio; /predict_batch rows per second, one batch at a time and one per worker; and a bare
in-process predict_proba as the floor.

A shared 2-core VM swings by a factor of two from minute to minute, so /predict and /livez are
measured in alternating rounds: the ratio is the median of the rounds' ratios, and the
percentiles are over the latencies of all rounds together.

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


class _Connections:
    """Keep-alive connections, opened one after another as a client pool opens them while its load rises.

    Opened in one burst they would all land on one worker: the worker that wakes first accepts
    every connection pending on the shared socket. Every measurement at a given concurrency reuses
    the same connections, so /predict and /livez meet the same split between the workers.
    """

    def __init__(self, streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
        self.streams = streams

    @classmethod
    async def open(cls, port: int, count: int) -> _Connections:
        streams = []
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _exchange(reader, writer, _request("/livez", None))
            await asyncio.sleep(0.01)
            streams.append((reader, writer))
        return cls(streams)

    async def load(self, request: bytes, total: int) -> tuple[list[float], float]:
        """``total`` requests spread over the connections; latencies (s) and wall time."""
        latencies: list[float] = []

        async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(total // len(self.streams)):
                start = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}")

        start = time.perf_counter()
        await asyncio.gather(*(worker(reader, writer) for reader, writer in self.streams))
        return latencies, time.perf_counter() - start

    def close(self) -> None:
        for _, writer in self.streams:
            writer.close()


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

    async def answers_ready() -> bool:
        connection = await _Connections.open(port, 1)
        try:
            return bool((await connection.load(ready, 1))[0])
        finally:
            connection.close()

    while time.monotonic() < deadline:
        try:
            if asyncio.run(answers_ready()):
                print(f"server ready in {time.monotonic() - started:.1f}s ({workers} worker(s))")
                return process
        except (OSError, RuntimeError, asyncio.IncompleteReadError):
            time.sleep(0.2)
    process.kill()
    raise TimeoutError("service did not become ready")


def _worker_cpu_seconds(server: subprocess.Popen) -> list[float]:
    import psutil

    workers = [p for p in psutil.Process(server.pid).children(recursive=True) if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    return [sum(p.cpu_times()[:2]) for p in sorted(workers, key=lambda p: p.pid)]


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


async def _measure(port: int, server: subprocess.Popen, records: list[dict], args: argparse.Namespace):
    one = _request("/predict", json.dumps({"features": records[0]}).encode())
    livez = _request("/livez", None)
    batch = _request("/predict_batch", json.dumps({"records": records}).encode())

    single = await _Connections.open(port, 1)
    sequential, _ = await single.load(one, 1000)
    single.close()

    pool = await _Connections.open(port, args.concurrency)
    await pool.load(one, 800)
    cpu_before = _worker_cpu_seconds(server)
    rounds: dict[str, list[tuple[float, list[float]]]] = {"/predict": [], "/livez": []}
    for round_ in range(args.rounds):
        order = (("/predict", one), ("/livez", livez))
        for name, request in order if round_ % 2 == 0 else order[::-1]:
            latencies, wall = await pool.load(request, args.requests)
            rounds[name].append((len(latencies) / wall, latencies))
    cpu_used = [after - before for before, after in zip(cpu_before, _worker_cpu_seconds(server), strict=True)]
    pool.close()

    batches = {}
    for concurrency in sorted({1, args.workers}):
        connections = await _Connections.open(port, concurrency)
        batches[concurrency] = await connections.load(batch, args.batches)
        connections.close()
    return sequential, rounds, cpu_used, batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".churnops"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4000, help="requests per round and endpoint")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=40, help="batch requests per batch measurement")
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
        measured = asyncio.run(_measure(port, server, records, args))
    finally:
        server.terminate()
        server.wait(timeout=20)
    sequential, rounds, cpu_used, batches = measured
    floor = _in_process_floor(records)

    print(f"\nsequential /predict: p50 {_pct(sequential, 50):.2f} ms, p99 {_pct(sequential, 99):.2f} ms")
    print(f"concurrency {args.concurrency}, {args.rounds} alternating rounds of {args.requests} requests:")
    for name, per_round in rounds.items():
        pooled = [latency for _, round_latencies in per_round for latency in round_latencies]
        rates = ", ".join(f"{rate:.0f}" for rate, _ in per_round)
        print(f"  {name:<9} median {statistics.median(r for r, _ in per_round):6.0f} req/s ({rates})   "
              f"p50 {_pct(pooled, 50):6.2f} ms   p99 {_pct(pooled, 99):6.2f} ms")
    print(f"  CPU split between the workers: {' / '.join(f'{c / sum(cpu_used):.0%}' for c in cpu_used)}")
    ratios = [p[0] / l[0] for p, l in zip(rounds["/predict"], rounds["/livez"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"  /predict throughput is {ratio:.0%} of /livez, median of rounds "
          f"({', '.join(f'{r:.0%}' for r in ratios)}; target >= 60%)")
    for concurrency, (latencies, wall) in batches.items():
        print(f"/predict_batch ({len(records)} records) at concurrency {concurrency}: "
              f"{len(latencies) * len(records) / wall:,.0f} rows/s, p50 {_pct(latencies, 50):.1f} ms per batch")
    for name, ms in floor.items():
        print(f"in-process predict_proba, {name}: {ms:.3f} ms")
    p99_c = _pct([latency for _, round_latencies in rounds["/predict"] for latency in round_latencies], 99)
    best_batch = max(len(lat) * len(records) / wall for lat, wall in batches.values())
    print(f"\ntargets: ratio {'met' if ratio >= 0.6 else 'MISSED'}, p99 at c={args.concurrency} {p99_c:.1f} ms "
          f"{'met' if p99_c < 10 else 'MISSED'} (< 10 ms), batch {best_batch:,.0f} rows/s "
          f"{'met' if best_batch >= 100_000 else 'MISSED'} (>= 100,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
