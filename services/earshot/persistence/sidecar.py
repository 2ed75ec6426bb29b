"""The ``earshot persister`` process: drains the spool a gateway writes, serves health and metrics.

It opens the stores (waiting, with backoff, while they are unreachable: the spool keeps
everything meanwhile), drains every stream of the spool directory, and answers ``GET /health`` and
``GET /metrics`` (Prometheus) on ``persister_port``; ``/health`` answers 503 while the drainer is
stuck (:attr:`Drainer.healthy`), so a liveness probe restarts it, and a drainer that stopped on an
unexpected error ends the process with that error (its container restarts).
SIGTERM or SIGINT: drain what is there within ``persister_shutdown_seconds``, then exit; what could
not be stored stays in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from earshot.persistence import journaling
from earshot.persistence.draining import Drainer, backoff
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.ports import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run(settings: Settings) -> None:
    """Run the persister until SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with AsyncExitStack() as stack:
        partials = backends.open_partial_store(
            settings.partials_url, ttl_seconds=settings.partial_ttl_seconds
        )
        stack.push_async_callback(partials.aclose)
        segments = await _until_open(
            lambda: backends.open_segment_store(settings.resolved_segments_url()),
            stopping,
            settings,
        )
        if segments is None:
            return
        stack.push_async_callback(segments.aclose)
        drainer = Drainer(
            settings.resolved_spool_dir(),
            partials=partials,
            segments=segments,
            policy=journaling.drain_policy(settings),
        )
        server = await asyncio.start_server(
            lambda r, w: _answer(r, w, drainer), settings.host, settings.persister_port
        )
        stack.push_async_callback(_close_server, server)
        port = server.sockets[0].getsockname()[1]
        log.info(
            "earshot persister draining %s (health and metrics on http://%s:%d)",
            settings.resolved_spool_dir(),
            settings.host,
            port,
        )
        draining = asyncio.create_task(drainer.run(), name="earshot-persister")
        stopped = asyncio.create_task(stopping.wait(), name="earshot-persister-stop")
        try:
            await asyncio.wait({draining, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if draining.done():
            # The drainer stopped on an error (logged by it): exit with it, so the container
            # restarts, rather than answer 503 until a probe notices.
            await draining
            return
        log.info("stopping: draining for up to %.1f s", settings.persister_shutdown_seconds)
        drainer.stop(settings.persister_shutdown_seconds)
        await draining


async def _until_open(
    opener: Callable[[], Awaitable[T]], stopping: asyncio.Event, settings: Settings
) -> T | None:
    attempt = 0
    while not stopping.is_set():
        try:
            return await opener()
        except StorageError as exc:
            attempt += 1
            log.warning("segment store not reachable yet (attempt %d): %s", attempt, exc)
            delay = backoff(attempt, settings.persister_retry_max_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
    return None


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drainer: Drainer
) -> None:
    """A minimal HTTP/1.0 responder: ``GET /health`` and ``GET /metrics``, 404 otherwise."""
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        method, path, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        status, content_type, body = _route(method, path.split("?", 1)[0], drainer)
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _route(method: str, path: str, drainer: Drainer) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n"
    if path == "/health":
        if not drainer.healthy:
            failing = {"status": "failing", "reason": "the drainer stopped or is stuck"}
            return "503 Service Unavailable", "application/json", json.dumps(failing).encode()
        body = {"status": "ok", "caught_up": drainer.caught_up}
        return "200 OK", "application/json", json.dumps(body).encode()
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, generate_latest()
    return "404 Not Found", "text/plain", b"not found\n"
