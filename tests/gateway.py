"""A real telephony gateway for tests: uvicorn on a free loopback port around given services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from earshot.gateways.g711 import serving
from earshot.gateways.g711.app import Services
from earshot.settings import Settings


@asynccontextmanager
async def running_gateway(settings: Settings, services: Services) -> AsyncIterator[str]:
    """Serve until the block ends; yields the ws:// base URL.

    Exiting ends every stream as a SIGTERM does (its last finals told, then 1012) and waits for it.
    """
    sock = serving.bind_socket(settings.model_copy(update={"host": "127.0.0.1", "port": 0}))
    port = sock.getsockname()[1]
    server = serving.gateway_server(settings, services)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def session_url(base: str, session_id: str) -> str:
    """The WebSocket URL of a session."""
    return f"{base}/ws/transcribe/{session_id}"
