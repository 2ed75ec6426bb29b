"""Idle connections: what N open, silent streams cost one gateway, and whether it gets it back.

Starts ``earshot serve`` as its own process (tiny Paraformer, memory partials, SQLite segments,
``EARSHOT_MAX_CONNECTIONS`` above N, ``EARSHOT_HANDSHAKE_TIMEOUT_SECONDS`` 5, no load limit:
``EARSHOT_MAX_INFERENCE_LOAD`` 0), warms it with one
short stream, then twice: opens N WebSocket streams that send nothing (each admitted stream holds a
recogniser stream), reads the gateway's RSS, closes them all, waits until
``earshot_active_streams`` is 0 and 5 s more, and reads the RSS again. A second round that ends
where the first ended means the memory of closed connections is reused, not leaked. Last, N raw TCP
connections that never send a request: how many the handshake timeout closed, and the RSS after.

Usage: ``python -m bench.idle_connections [--connections 2000]``. Writes
``bench/reports/idle_connections.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench import procstats
from tests.servers import free_port

REPORT = Path(__file__).parent / "reports" / "idle_connections.md"
HANDSHAKE_TIMEOUT_SECONDS = 5.0


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "earshot", "serve"], env=env)


async def _healthy(http: httpx.AsyncClient, base: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(1200):
        if server.poll() is not None:
            raise SystemExit(f"earshot serve exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{base}/health")).is_success:
                return
        await asyncio.sleep(0.1)
    raise SystemExit("earshot serve did not answer /health in 120 s")


async def _active_streams(http: httpx.AsyncClient, base: str) -> float:
    text = (await http.get(f"{base}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("earshot_active_streams{")
    )


def _mib(pid: int) -> float:
    return procstats.read(pid).rss_bytes / 2**20


async def _open_silent(url: str, count: int) -> list[ClientConnection]:
    opened: list[ClientConnection] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(
            *(connect(f"{url}/idle-{n}", open_timeout=60) for n in range(start, start + 100))
        )
        opened += batch[: count - start]
    return opened


async def _settled(http: httpx.AsyncClient, base: str) -> None:
    for _ in range(600):
        if await _active_streams(http, base) == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(5.0)


def _silent_tcp(port: int, count: int) -> int:
    """Open ``count`` sockets that send nothing; how many the server closed by the timeout."""
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_SECONDS + 10
    closed = 0
    for sock in sockets:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            if sock.recv(1) == b"":
                closed += 1
        sock.close()
    return closed


async def run(connections: int) -> str:
    port = free_port()
    base, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws/transcribe"
    env = {
        **os.environ,
        "EARSHOT_PORT": str(port),
        "EARSHOT_CACHE_DIR": tempfile.mkdtemp(prefix="earshot-idle-"),
        "EARSHOT_LOG_LEVEL": "warning",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_MAX_CONNECTIONS": str(connections + 10),
        "EARSHOT_HANDSHAKE_TIMEOUT_SECONDS": str(HANDSHAKE_TIMEOUT_SECONDS),
        # Connections that send nothing would count as real-time streams for the load limit and
        # be refused past the recogniser's measured capacity: this measures what idle ones hold.
        "EARSHOT_MAX_INFERENCE_LOAD": "0",
    }
    server = await asyncio.to_thread(_spawn, env)
    rows: list[str] = []
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            await _healthy(http, base, server)
            async with connect(f"{ws}/warm-up") as warm:
                for _ in range(50):
                    await warm.send(b"\xd5" * 160)
            await _settled(http, base)
            idle = _mib(server.pid)
            rows.append(f"| idle, after one warm-up stream | | {idle:.0f} |")
            for round_ in (1, 2):
                opened = await _open_silent(ws, connections)
                await asyncio.sleep(2.0)
                active = await _active_streams(http, base)
                rows.append(
                    f"| round {round_}: {connections} silent streams open | {active:.0f} | "
                    f"{_mib(server.pid):.0f} |"
                )
                await asyncio.gather(*(c.close() for c in opened))
                await _settled(http, base)
                rows.append(
                    f"| round {round_}: all closed, 5 s later | 0 | {_mib(server.pid):.0f} |"
                )
            closed = await asyncio.to_thread(_silent_tcp, port, connections)
            rows.append(
                f"| {connections} TCP connections that send nothing: {closed} closed by the "
                f"{HANDSHAKE_TIMEOUT_SECONDS:g} s handshake timeout | | {_mib(server.pid):.0f} |"
            )
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 30)
    return "\n".join(
        [
            "# idle_connections: silent streams and silent sockets against one gateway",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work while "
            f"it ran), Python {platform.python_version()}. "
            f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
            "Engine: in-process tiny random-weight Paraformer; memory partials, SQLite "
            "segments, embedded persister. RSS read from /proc once per step (one run).",
            f"Command: `python -m bench.idle_connections --connections {connections}`.",
            "",
            "| step | active streams | gateway RSS MiB |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    text = asyncio.run(run(args.connections))
    print(text)
    REPORT.write_text(text)


if __name__ == "__main__":
    main()
