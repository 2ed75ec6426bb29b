"""The telephony client lingers until the server has said its last final, not merely a final.

A server behind its client (audio sent faster than real time) says one segment's final before the
next segment's first partial: the client must not leave in that gap. The servers here are real
WebSocket servers scripted to answer with such gaps.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from earshot.gateways.g711 import client, messages

pytestmark = pytest.mark.asyncio

FRAMES = [b"\xd5" * 160] * 25  # half a second of A-law silence
GAP_SECONDS = 0.6  # between a final and the next segment's first partial: under SETTLE_SECONDS

Script = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[str]:
    """A server that reads every frame the client sends, then runs ``script``."""

    async def handle(connection: ServerConnection) -> None:
        for _ in FRAMES:
            await connection.recv()
        await script(connection)
        with_close = asyncio.create_task(connection.wait_closed())
        await asyncio.wait([with_close], timeout=30.0)

    async with serve(handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/transcribe/linger"


async def send(connection: ServerConnection, message: messages.ServerMessage) -> None:
    await connection.send(json.dumps(message))


async def test_a_final_followed_by_a_gap_then_more_segments_is_not_the_end() -> None:
    async def behind(connection: ServerConnection) -> None:
        await send(connection, messages.final("one", 1))
        await asyncio.sleep(GAP_SECONDS)
        await send(connection, messages.partial("tw", 2))
        await asyncio.sleep(GAP_SECONDS)
        await send(connection, messages.final("two", 2))

    async with scripted(behind) as url:
        result = await client.stream(url, FRAMES, frame_seconds=0.02, speed=0, linger=20.0)

    assert [f["text"] for f in result.finals] == ["one", "two"]
    assert result.close_code == 1000


async def test_the_client_leaves_once_the_last_final_is_followed_by_quiet() -> None:
    async def done(connection: ServerConnection) -> None:
        await send(connection, messages.final("one", 1))

    async with scripted(done) as url:
        started = time.monotonic()
        result = await client.stream(url, FRAMES, frame_seconds=0.02, speed=0, linger=20.0)
        took = time.monotonic() - started

    assert [f["text"] for f in result.finals] == ["one"]
    assert client.SETTLE_SECONDS <= took < 10.0  # settled, not the whole linger


async def test_a_server_that_closes_ends_the_linger_at_once() -> None:
    async def refuse(connection: ServerConnection) -> None:
        await send(connection, messages.partial("hal", 1))
        await connection.close(1013, "overloaded")

    async with scripted(refuse) as url:
        started = time.monotonic()
        result = await client.stream(url, FRAMES, frame_seconds=0.02, speed=0, linger=20.0)
        took = time.monotonic() - started

    assert result.close_code == 1013
    assert took < 10.0  # not the whole linger
