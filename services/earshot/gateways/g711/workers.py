"""``EARSHOT_WORKERS=N``: N gateway processes on one port, so that one pod uses N cores.

Each worker is a whole gateway (``earshot serve`` with ``EARSHOT_WORKERS=1``): its own recogniser,
event loop, spool stream and session leases. They listen on the same port with ``SO_REUSEPORT``,
and the kernel spreads new connections over them. This process only reserves the port (bound, not
listening, so it takes no connections), starts the workers, passes SIGTERM/SIGINT on (each worker
then drains its streams as one gateway does) and waits for them.

A session may reach two workers (a client reconnecting lands where the kernel sends it); the
session lease arbitrates between them as between two pods: with Redis partials the lease there,
with the in-process memory store a lock file per session in the shared spool directory
(:mod:`earshot.persistence.leasing`). The newer connection is refused with ``session_in_use``
(1013, retryable) until the older one has ended.

May do: bind a socket, start and signal child processes. Must not: serve streams itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from earshot.settings import Settings

log = logging.getLogger(__name__)

# A worker that has not ended this long after SIGTERM is killed (its drain is bounded well below).
STOP_SECONDS = 60.0


class WorkerFailed(Exception):
    """A worker process ended on its own with a failure; the others were stopped."""


def reserve_port(settings: Settings) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT: the port (also a free one, port 0) is known and
    stays ours, and a port another program holds fails here, before any worker starts."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    return sock


async def supervise(settings: Settings) -> int | None:
    """Run ``settings.workers`` gateway processes on one port until a signal stops them.

    Returns:
        The signal that stopped them.

    Raises:
        WorkerFailed: a worker exited by itself with a non-zero status (the others are stopped).
    """
    with reserve_port(settings) as reserved:
        port = reserved.getsockname()[1]
        env = {
            **os.environ,
            "EARSHOT_WORKERS": "1",
            "EARSHOT_PORT": str(port),
            "EARSHOT_REUSE_PORT": "true",
        }
        workers = [
            await asyncio.create_subprocess_exec(sys.executable, "-m", "earshot", "serve", env=env)
            for _ in range(settings.workers)
        ]
        log.info(
            "earshot gateway: %d worker processes on %s:%d (pids %s)",
            len(workers),
            settings.host,
            port,
            ", ".join(str(w.pid) for w in workers),
        )
        signalled: list[int] = []
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            signalled.append(signum)
            _signal(workers, signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            ended = [asyncio.create_task(worker.wait()) for worker in workers]
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
            early = [] if signalled else [w for w in workers if w.returncode is not None]
            if early:
                log.error("a gateway worker ended by itself: stopping the others")
                _signal(workers, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.gather(*ended), STOP_SECONDS)
            except TimeoutError:
                for worker in workers:
                    with contextlib.suppress(ProcessLookupError):
                        worker.kill()
                await asyncio.gather(*ended)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if early:
            raise WorkerFailed(
                "gateway worker "
                + ", ".join(f"{w.pid} (status {w.returncode})" for w in early)
                + " ended by itself; the others were stopped"
            )
        return signalled[0] if signalled else None


def _signal(workers: list[asyncio.subprocess.Process], signum: int) -> None:
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)
