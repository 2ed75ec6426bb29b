"""A real telephony gateway for tests: uvicorn on a free loopback port around given services; and
a client that sends frames and reads until the gateway closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.engines.paraformer import ParaformerDecoder, ParaformerStream
from earshot.engines.recognizers import Samples
from earshot.events import Recognition
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


async def until_closed(
    url: str, send: Sequence[bytes | str], *, token: str | None = None
) -> tuple[list[dict[str, object]], int | None, str]:
    """Send ``send`` as fast as possible (with the token as a Bearer header, if any), then read
    until the server closes: what it sent, its close code and its close reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    received: list[dict[str, object]] = []
    async with connect(url, additional_headers=headers) as ws:
        with contextlib.suppress(ConnectionClosed):
            for frame in send:
                await ws.send(frame)
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                received.append(json.loads(raw))
        return received, ws.close_code, ws.close_reason or ""


class WrappedDecoder:
    """The real Paraformer decoder, passed through; tests override ``decode`` to stall or slow it."""

    def __init__(self, inner: ParaformerDecoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate

    def open(self) -> ParaformerStream:
        return self.inner.open()

    def accept(self, stream: ParaformerStream, samples: Samples) -> None:
        self.inner.accept(stream, samples)

    def finish(self, stream: ParaformerStream) -> None:
        self.inner.finish(stream)

    def decode(self, streams: Sequence[ParaformerStream]) -> list[list[Recognition]]:
        return self.inner.decode(streams)
