"""The telephony gateway collects a pipelined recogniser's answers as they come, and while its
client is quiet.

A pipelined recogniser (Triton) answers a chunk after the call that sent it returned; the answers
would wait for the client's next audio, and a client's last chunks for audio that never comes. The
gateway here is the real one (uvicorn, the embedded stores); the recogniser stands in for Triton's
timing only: each chunk is answered with a final ``ANSWER_DELAY`` after it was sent, whichever call
returns it (:class:`LateStream`), or when the test says and then told to the gateway's listener
(:class:`tests.told_recognizer.ToldStream`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from earshot.engines.recognizers import Samples
from earshot.events import Recognition, SessionId
from earshot.gateways.g711 import app
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url
from tests.told_recognizer import ToldRecognizer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FRAME = b"\xd5" * 160  # 20 ms of A-law silence
ANSWER_DELAY = 0.05


@dataclass
class LateStream:
    """Answers chunk ``n`` with the final ``chunk n``, ``delay`` seconds after it was sent (never,
    with None); ``finish`` answers everything."""

    delay: float | None
    sent: list[tuple[int, float]] = field(default_factory=list)
    collections: int = 0
    answered_chunks: int = 0

    @property
    def sent_chunks(self) -> int:
        return len(self.sent)

    @property
    def unanswered(self) -> bool:
        return self.answered_chunks < self.sent_chunks

    @property
    def ready(self) -> bool:
        return False  # it never says an answer came: the gateway's quiet watch collects them

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        return None

    async def accept(self, samples: Samples) -> list[Recognition]:
        self.sent.append((self.sent_chunks + 1, time.perf_counter()))
        return self._due(time.perf_counter())

    async def collect(self) -> list[Recognition]:
        self.collections += 1
        return self._due(time.perf_counter())

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        return self._due(float("inf"))

    def _due(self, now: float) -> list[Recognition]:
        said = []
        for number, heard in self.sent[self.answered_chunks :]:
            if now != float("inf") and (self.delay is None or now < heard + self.delay):
                break
            said.append(Recognition(f"chunk {number}", is_final=True, heard=heard))
            self.answered_chunks += 1
        return said


@dataclass
class LateRecognizer:
    delay: float | None
    name: str = "late"
    sample_rate: int = 8000
    streams: list[LateStream] = field(default_factory=list)

    def open_stream(self) -> LateStream:
        self.streams.append(LateStream(self.delay))
        return self.streams[-1]

    async def aclose(self) -> None:
        return None


async def _read(ws: ClientConnection, count: int, within: float) -> list[dict[str, object]]:
    """The next ``count`` messages, within ``within`` seconds."""
    async with asyncio.timeout(within):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def test_a_quiet_clients_last_finals_come_without_more_audio(
    settings: Settings, services: Services
) -> None:
    recognizer = LateRecognizer(ANSWER_DELAY)
    async with (
        running_gateway(settings, Services(recognizer, services.stores)) as base,
        connect(session_url(base, "quiet")) as ws,
    ):
        for _ in range(5):
            await ws.send(FRAME)
        # then nothing: the answers of the last chunks come while the client waits
        said = await _read(ws, 5, within=10.0)
        assert [m["text"] for m in said] == [f"chunk {n}" for n in range(1, 6)]
        assert [m["seq"] for m in said] == [1, 2, 3, 4, 5]
        (stream,) = recognizer.streams
        assert stream.sent_chunks == 5
        assert stream.collections >= 1


async def test_the_idle_timeout_still_ends_a_stream_whose_answers_never_come(
    settings: Settings, services: Services
) -> None:
    recognizer = LateRecognizer(delay=None)
    idle_settings = settings.model_copy(update={"idle_timeout_seconds": 1.0})
    async with (
        running_gateway(idle_settings, Services(recognizer, services.stores)) as base,
        connect(session_url(base, "never")) as ws,
    ):
        await ws.send(FRAME)
        (told,) = await _read(ws, 1, within=10.0)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert told["code"] == "idle_timeout"
    assert ws.close_code == 1000
    (stream,) = recognizer.streams
    # the quiet watch kept looking until the idle timeout, once per QUIET_COLLECT_SECONDS (about
    # 10 times in the 1 s), not spinning
    assert 3 <= stream.collections <= 20, stream.collections
    stored = await services.stores.segments.segments(SessionId("never"))
    assert [s.text for s in stored] == ["chunk 1"]  # answered by finish, stored


@pytest.mark.parametrize("during_call", [False, True], ids=["between-frames", "while-busy"])
async def test_an_answer_told_between_calls_is_sent_at_once_not_with_the_next_frame(
    settings: Settings, services: Services, monkeypatch: pytest.MonkeyPatch, during_call: bool
) -> None:
    # no quiet collection within the test: only the recogniser's word can bring the answer
    monkeypatch.setattr(app, "QUIET_COLLECT_SECONDS", 600.0)
    recognizer = ToldRecognizer(during_call)
    async with (
        running_gateway(settings, Services(recognizer, services.stores)) as base,
        connect(session_url(base, "told")) as ws,
    ):
        await ws.send(FRAME)
        async with asyncio.timeout(10.0):
            await recognizer.opened.wait()
            (stream,) = recognizer.streams
            await stream.arrived.wait()
        if not during_call:
            await asyncio.sleep(0.05)  # the gateway waits for the next frame
            stream.answer()
        (said,) = await _read(ws, 1, within=10.0)
        assert (said["type"], said["text"], said["seq"]) == ("final", "chunk 1", 1)
        assert (stream.sent_chunks, stream.collections) == (1, 1)
