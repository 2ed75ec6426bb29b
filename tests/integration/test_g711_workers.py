"""``EARSHOT_WORKERS=2``: two real gateway processes on one port, a session on one of them at a time.

Runs ``earshot serve`` as a real process tree; the kernel spreads connections over the workers
(SO_REUSEPORT), which the test sees in the ``process_start_time_seconds`` each /metrics answer
comes with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.servers import free_port

SILENCE = b"\xd5" * 160


@contextlib.asynccontextmanager
async def two_workers(
    tmp_path: Path, cache: Path
) -> AsyncIterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **os.environ,
        "EARSHOT_WORKERS": "2",
        "EARSHOT_PORT": str(port),
        "EARSHOT_HOST": "127.0.0.1",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(cache),
        "EARSHOT_SPOOL_DIR": str(tmp_path / "spool"),
        "EARSHOT_SEGMENTS_URL": f"sqlite:///{tmp_path / 'seg.db'}",
        "EARSHOT_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "earshot", "serve"], env=env)  # noqa: ASYNC220
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                assert process.poll() is None, f"earshot serve exited with {process.returncode}"
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def workers_of(process: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def owner(ws: ClientConnection, port: int, workers: list[int]) -> int:
    """The worker holding the server side of a client's connection (from /proc: the socket whose
    remote port is the client's local one, and the process that has it open)."""
    client_port = ws.local_address[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inodes.add(f"socket:[{inode}]")
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


async def both_listening(port: int, workers: list[int]) -> None:
    """Until each worker has taken a connection (each loads its own model first)."""
    seen: set[int] = set()
    for i in range(600):
        async with connect(f"ws://127.0.0.1:{port}/ws/transcribe/probe-{i}") as ws:
            await ws.send(SILENCE)
            await asyncio.sleep(0.05)
            seen.add(owner(ws, port, workers))
        if seen == set(workers):
            return
    raise AssertionError(f"only workers {seen} of {workers} took connections")


async def held(stack: contextlib.AsyncExitStack, url: str) -> ClientConnection:
    """A connection the session streams on (retried while another one still finishes it)."""
    for _ in range(50):
        ws = await stack.enter_async_context(connect(url))
        with contextlib.suppress(ConnectionClosed):
            await ws.send(SILENCE)
            await asyncio.sleep(0.3)
        if ws.close_code is None:
            return ws
    raise AssertionError(f"{url} was refused for 15 s")


async def test_two_workers_share_the_port_and_a_session_streams_on_one_at_a_time(
    tmp_path: Path, tiny_model_cache: Path
) -> None:
    async with two_workers(tmp_path, tiny_model_cache) as (port, process):
        workers = workers_of(process)
        assert len(workers) == 2
        await both_listening(port, workers)
        base = f"ws://127.0.0.1:{port}/ws/transcribe"
        async with contextlib.AsyncExitStack() as stack:
            spread = []
            for i in range(16):
                ws = await stack.enter_async_context(connect(f"{base}/spread-{i}"))
                await ws.send(SILENCE)
                spread.append(owner(ws, port, workers))
            # The kernel spreads the connections over both processes on the one port.
            assert set(spread) == set(workers), spread

            # A session reconnecting lands on either worker: the one streaming it hands it to the
            # newer connection; the other refuses the newer one while the first streams it.
            holder = await held(stack, f"{base}/dup")
            refused = taken_over = 0
            for _ in range(12):
                async with connect(f"{base}/dup") as again:
                    said: list[dict[str, object]] = []
                    # A stream of silence that took over hears nothing: read for 2 s at most.
                    with contextlib.suppress(ConnectionClosed):
                        await again.send(SILENCE)
                    with contextlib.suppress(ConnectionClosed, TimeoutError):
                        async with asyncio.timeout(2.0):
                            async for raw in again:
                                said.append(json.loads(raw))
                    if again.close_code == 1013:
                        assert [m["code"] for m in said] == ["session_in_use"], said
                        assert said[0]["retryable"] is True
                        assert holder.close_code is None  # the session goes on where it was
                        refused += 1
                        continue
                    assert said == [], said
                    # Taken over: the older connection was told so and closed.
                    await asyncio.wait_for(holder.wait_closed(), 5)
                    assert holder.close_code == 1000
                    taken_over += 1
                # Its previous connection may still be finishing on the other worker: retry.
                holder = await held(stack, f"{base}/dup")
            assert refused, "no reconnect landed on the other worker"

        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
