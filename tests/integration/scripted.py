"""A telephony gateway around a scripted recogniser, and the client helpers its tests share.

The recogniser is the real batching recogniser around a scripted decoder: it answers every chunk
with the partial "hearing" and the end of a stream with the final "heard <n samples>", and it can
hold one decode call on a gate, so that a test fills the inference queue exactly when it means to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import Samples
from earshot.events import Recognition, Segment, SessionId
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url

CHUNK = b"\xd5" * 160  # 20 ms of A-law silence: the scripted decoder does not listen to it


@dataclass
class ScriptedStream:
    samples: int = 0
    ended: bool = False


class ScriptedDecoder:
    """A decoder whose answers are known in advance; ``hold_next`` stalls its next decode call."""

    name = "scripted"
    sample_rate = 16000

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self._hold = False
        self._lock = threading.Lock()

    def hold_next(self) -> None:
        self.held.clear()
        self.release.clear()
        self._hold = True

    def open(self) -> ScriptedStream:
        return ScriptedStream()

    def accept(self, stream: ScriptedStream, samples: Samples) -> None:
        stream.samples += samples.size

    def finish(self, stream: ScriptedStream) -> None:
        stream.ended = True

    def decode(self, streams: Sequence[ScriptedStream]) -> list[list[Recognition]]:
        with self._lock:
            hold, self._hold = self._hold, False
        if hold:
            self.held.set()
            self.release.wait(30.0)
        return [
            [Recognition(f"heard {s.samples}", True)]
            if s.ended
            else [Recognition("hearing", False)]
            for s in streams
        ]


@asynccontextmanager
async def scripted_gateway(
    settings: Settings,
    services: Services,
    *,
    workers: int = 2,
    decoder: ScriptedDecoder | None = None,
) -> AsyncIterator[tuple[str, ScriptedDecoder]]:
    """A gateway whose inference queue holds one chunk and waits 0.2 s for room; ``decoder``: a
    scripted decoder with other answers."""
    decoder = decoder if decoder is not None else ScriptedDecoder()
    recognizer = BatchingRecognizer(decoder, workers=workers, queue_size=1, queue_timeout=0.2)
    try:
        async with running_gateway(settings, Services(recognizer, services.stores)) as base:
            try:
                yield base, decoder
            finally:
                decoder.release.set()
    finally:
        await recognizer.aclose()


async def heard(ws: ClientConnection) -> dict[str, object]:
    message: dict[str, object] = json.loads(await asyncio.wait_for(ws.recv(), 10.0))
    return message


async def until_closed(ws: ClientConnection) -> list[dict[str, object]]:
    """What the server sends until it closes (at most 10 s: a server that never closes fails)."""
    received: list[dict[str, object]] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                received.append(json.loads(raw))

    await asyncio.wait_for(read(), 10.0)
    return received


async def stored(services: Services, session: str, count: int) -> list[tuple[int, str]]:
    """The session's stored finals once there are ``count`` of them (what there is after 10 s)."""
    segments: list[Segment] = []
    for _ in range(100):
        segments = await services.stores.segments.segments(SessionId(session))
        if len(segments) >= count:
            break
        await asyncio.sleep(0.1)
    return [(s.seq, s.text) for s in segments]


async def fill_the_queue(base: str, decoder: ScriptedDecoder) -> ClientConnection:
    """Another stream's chunk stalls on a worker, holding the queue's only slot."""
    decoder.hold_next()
    blocker = await connect(session_url(base, "blocker"))
    await blocker.send(CHUNK)
    assert await asyncio.to_thread(decoder.held.wait, 10.0)
    return blocker
