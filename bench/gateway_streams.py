"""Concurrent real-time G.711 streams against one gateway process.

Starts ``earshot serve`` as its own process (tiny Paraformer, memory partials, SQLite segments),
then for each N runs N clients that each send the bundled A-law sample in a loop as 20 ms frames
in real time. For each N it reports:

* chunk delay p50/p95/p99: from a chunk being sent to the first partial received after it, for
  chunks that are followed by a partial before the next chunk is sent (client side; includes the
  network, the queueing in the socket and the inference queue);
* server-side chunk processing p50/p95/p99 from the gateway's own histogram
  (``earshot_chunk_processing_seconds``, interpolated within buckets);
* CPU per stream (gateway process CPU seconds / wall seconds / N, in % of one core);
* RSS per stream ((RSS under load - idle RSS) / N);
* overloads (streams closed with 1013) and other closes.

Usage: ``python -m bench.gateway_streams [--streams 10 50 100 200] [--seconds 20]``.
Writes ``bench/reports/gateway_streams.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench import procstats
from bench.quantiles import percentiles_ms
from earshot.audio.codecs import Codec
from earshot.cli.demoing import sample_audio
from earshot.gateways.g711 import client

FRAME_SECONDS = 0.02
REPORT = Path(__file__).parent / "reports" / "gateway_streams.md"


@dataclass
class Load:
    """What the clients of one round saw."""

    chunk_delays: list[float] = field(default_factory=list)
    partials: int = 0
    finals: int = 0
    overloads: int = 0
    other_closes: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _one_stream(
    url: str, frames: list[bytes], seconds: float, offset: float, load: Load
) -> None:
    await asyncio.sleep(offset)
    sent_at: list[float] = []
    answered = 0  # index of the first chunk not yet followed by a partial

    async def receive(ws: object) -> None:
        nonlocal answered
        async for raw in ws:  # type: ignore[attr-defined]
            now = time.perf_counter()
            message = json.loads(raw)
            if message["type"] == "partial":
                load.partials += 1
                if len(sent_at) > answered:
                    load.chunk_delays.append(now - sent_at[-1])
                answered = len(sent_at)
            elif message["type"] == "final":
                load.finals += 1
            elif message.get("code") == "inference_overloaded":
                load.overloads += 1

    async with connect(url, max_size=None) as ws:
        receiver = asyncio.create_task(receive(ws))
        start = time.perf_counter()
        try:
            index = 0
            while (elapsed := time.perf_counter() - start) < seconds:
                delay = index * FRAME_SECONDS - elapsed
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at.append(time.perf_counter())
                await ws.send(frames[index % len(frames)])
                index += 1
            await ws.close()
        except ConnectionClosed:
            if ws.close_code not in (1013, 1000):
                load.other_closes += 1
        finally:
            with contextlib.suppress(ConnectionClosed):
                await receiver


def _histogram_quantiles(
    exposition: str, name: str, before: dict[float, float]
) -> tuple[list[float], dict[float, float]]:
    buckets: dict[float, float] = {}
    for line in exposition.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    delta = {b: c - before.get(b, 0.0) for b, c in sorted(buckets.items())}
    total = delta.get(float("inf"), 0.0)
    out = []
    for q in (0.5, 0.95, 0.99):
        out.append(_bucket_quantile(delta, q * total) * 1000 if total else float("nan"))
    return out, buckets


def _bucket_quantile(cumulative: dict[float, float], rank: float) -> float:
    lower, lower_count = 0.0, 0.0
    for bound, count in cumulative.items():
        if count >= rank:
            if bound == float("inf"):
                return lower
            span = count - lower_count
            return lower + (bound - lower) * ((rank - lower_count) / span if span else 0.0)
        lower, lower_count = bound, count
    return lower


async def _round(
    base: str,
    http: str,
    pid: int,
    n: int,
    seconds: float,
    frames: list[bytes],
    idle_rss: int,
    before: dict[float, float],
) -> tuple[list[str], dict[float, float]]:
    load = Load()
    cpu0, wall0 = procstats.read(pid).cpu_seconds, time.perf_counter()
    peak_rss = 0

    async def sample_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, procstats.read(pid).rss_bytes)
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    try:
        await asyncio.gather(
            *(
                _one_stream(
                    f"{base}/ws/transcribe/bench-{n}-{i}",
                    frames,
                    seconds,
                    i * FRAME_SECONDS / max(1, n // 50),
                    load,
                )
                for i in range(n)
            )
        )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    cpu = procstats.read(pid).cpu_seconds - cpu0
    wall = time.perf_counter() - wall0
    async with httpx.AsyncClient() as h:
        exposition = (await h.get(f"{http}/metrics")).text
    server_q, buckets = _histogram_quantiles(exposition, "earshot_chunk_processing_seconds", before)
    client_q = percentiles_ms(load.chunk_delays)
    row = [
        str(n),
        *(f"{v:.1f}" for v in client_q),
        *(f"{v:.1f}" for v in server_q),
        f"{100 * cpu / wall / n:.2f}",
        f"{max(0, peak_rss - idle_rss) / n / 2**20:.2f}",
        str(load.partials),
        str(load.finals),
        str(load.overloads),
        str(load.other_closes),
    ]
    return row, buckets


HEADER = [
    "streams",
    "chunk→partial p50 ms",
    "p95",
    "p99",
    "server chunk p50 ms",
    "p95",
    "p99",
    "CPU/stream %core",
    "RSS/stream MiB",
    "partials",
    "finals",
    "overloads",
    "other closes",
]


async def main_async(args: argparse.Namespace) -> str:
    port = _free_port()
    cache = Path(tempfile.mkdtemp(prefix="earshot-bench-"))
    env = {
        **os.environ,
        "EARSHOT_PORT": str(port),
        "EARSHOT_CACHE_DIR": str(cache),
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_LOG_LEVEL": "warning",
        "EARSHOT_INFERENCE_QUEUE_SIZE": str(args.queue_size),
    }
    server = subprocess.Popen([sys.executable, "-m", "earshot", "serve"], env=env)  # noqa: ASYNC220 (a long-lived child, not awaited)
    base, http = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(http, server)
        frames = client.frames_of(sample_audio(), codec=Codec.ALAW, rate=8000, frame_ms=20)
        idle_rss = procstats.read(server.pid).rss_bytes
        rows: list[list[str]] = []
        before: dict[float, float] = {}
        for n in args.streams:
            print(f"-> {n} streams for {args.seconds:.0f} s", flush=True)
            row, before = await _round(
                base, http, server.pid, n, args.seconds, frames, idle_rss, before
            )
            rows.append(row)
            print("   " + " | ".join(row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return _report(rows, args, idle_rss)


async def _wait_healthy(http: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient() as h:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"earshot serve exited with {server.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await h.get(f"{http}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit("earshot serve did not become healthy in 120 s")


def _report(rows: list[list[str]], args: argparse.Namespace, idle_rss: int) -> str:
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(
        [
            "# gateway_streams: concurrent real-time G.711 streams, one gateway process",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
            f"Engine: in-process tiny random-weight Paraformer, 1 inference worker, queue "
            f"{args.queue_size}. Each stream: 20 ms A-law frames in real time for {args.seconds:.0f} s. "
            f"Load generator in a second process on the same machine. Idle gateway RSS "
            f"{idle_rss / 2**20:.0f} MiB.",
            "",
            *table,
            "",
            "Command: `" + " ".join(["python", "-m", "bench.gateway_streams", *sys.argv[1:]]) + "`",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
