"""The G.711 gateway's latencies are measured from the chunk behind each answer.

A pipelined recogniser (Triton) may return chunk N's answer with chunk N+1's call: the final, the
reply and the chunk's own latency are then measured from chunk N's arrival, not from N+1's. The
clock of the transcribing and arrivals modules is a fake one the test moves, so the figures are
exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from earshot.audio import codecs
from earshot.audio.holding import HeldAudio
from earshot.audio.resampling import StreamResampler
from earshot.engines.recognizers import EngineOverloaded, Samples
from earshot.events import Recognition, SessionId
from earshot.gateways import arrivals
from earshot.gateways.g711 import transcribing
from earshot.gateways.g711.transcribing import Meters, Stores, Transcription
from earshot.persistence import journaling
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore

RATE = 8000
CHUNK = bytes(160)  # 20 ms of mu-law silence
CALL_SECONDS = 0.5  # how long each recogniser call takes on the fake clock


class FakeClock:
    """Stands in for the ``time`` module of :mod:`earshot.gateways.g711.transcribing`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


class PipelinedStream:
    """Answers each chunk with the next call (as Triton may), each answer carrying its ``heard``."""

    def __init__(self, clock: FakeClock, answers: list[list[Recognition]]) -> None:
        self._clock = clock
        self._answers = answers  # what each chunk makes the recogniser say, in order
        self._heard: list[float] = []
        self.sent_chunks = 0
        self.answered_chunks = 0

    async def accept(self, samples: Samples) -> list[Recognition]:
        said = self._answer_sent()
        self._heard.append(self._clock.now)
        self.sent_chunks += 1
        self._clock.now += CALL_SECONDS
        return said

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        said = self._answer_sent()
        self._clock.now += CALL_SECONDS
        return said

    @property
    def unanswered(self) -> bool:
        return self.answered_chunks < self.sent_chunks

    @property
    def ready(self) -> bool:
        return False  # answers come with calls only

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        return None

    async def collect(self) -> list[Recognition]:
        return self._answer_sent()

    def _answer_sent(self) -> list[Recognition]:
        said: list[Recognition] = []
        while self.answered_chunks < self.sent_chunks:
            heard = self._heard[self.answered_chunks]
            said += [
                Recognition(r.text, r.is_final, heard=heard)
                for r in self._answers[self.answered_chunks]
            ]
            self.answered_chunks += 1
        return said


class InProcessStream:
    """Answers each chunk within the call that takes it (``heard`` left None)."""

    def __init__(self, clock: FakeClock, answers: list[list[Recognition]]) -> None:
        self._clock = clock
        self._answers = answers

    async def accept(self, samples: Samples) -> list[Recognition]:
        self._clock.now += CALL_SECONDS
        return self._answers.pop(0)

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        self._clock.now += CALL_SECONDS
        return []


class HoldingStream:
    """Wants ``step`` samples before a call says anything (as the in-process Paraformer's window);
    refuses the calls numbered in ``refuse`` with EngineOverloaded."""

    def __init__(self, step: int, refuse: set[int] | None = None) -> None:
        self.step = step
        self.refuse = refuse or set()
        self.taken: list[Samples] = []
        self.tail: Samples | None = None
        self.calls = 0

    @property
    def wanted_samples(self) -> int:
        return max(0, self.step - sum(s.size for s in self.taken))

    async def accept(self, samples: Samples) -> list[Recognition]:
        self.calls += 1
        if self.calls in self.refuse:
            raise EngineOverloaded("full")
        self.taken.append(samples)
        return [Recognition("step", is_final=False)]

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        self.tail = tail
        return []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(transcribing, "time", fake)
    monkeypatch.setattr(arrivals, "time", fake)
    return fake


@pytest_asyncio.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    settings = Settings(cache_dir=tmp_path, spool_dir=tmp_path / "spool", persister="sidecar")
    partials = MemoryPartialStore(ttl_seconds=60)
    segments = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    try:
        async with journaling.open_journal(
            settings, partials=partials, segments=segments
        ) as journal:
            yield Stores(partials, segments, journal)
    finally:
        await segments.aclose()


def transcription(
    stream: PipelinedStream | InProcessStream | HoldingStream, stores: Stores, engine: str
) -> Transcription:
    return Transcription(
        session_id=SessionId(f"call-{engine}"),
        codec=codecs.Codec.ULAW,
        source_rate=RATE,
        stream=stream,
        audio=HeldAudio(codecs.Codec.ULAW, StreamResampler(RATE, RATE)),
        stores=stores,
        engine=engine,
        next_seq=1,
        meters=Meters.for_engine(engine),
    )


def observed(metric: str, engine: str) -> tuple[float, float]:
    """(count, sum) of a gateway histogram for ``engine``."""
    labels = {"gateway": "g711", "engine": engine}
    count = REGISTRY.get_sample_value(f"{metric}_count", labels)
    total = REGISTRY.get_sample_value(f"{metric}_sum", labels)
    assert count is not None
    assert total is not None
    return count, total


async def test_an_answer_returned_with_a_later_chunk_is_timed_from_its_own_chunk(
    clock: FakeClock, stores: Stores
) -> None:
    engine = "fake-pipelined"
    stream = PipelinedStream(
        clock, [[Recognition("hello", is_final=True)], [Recognition("wor", is_final=False)]]
    )
    said = transcription(stream, stores, engine)
    assert await said.feed(CHUNK) == []  # chunk A arrives at 1000, its answer is still out
    clock.now = 1010.0
    out = await said.feed(CHUNK)  # chunk B arrives at 1010; A's final comes back with it
    assert [message["type"] for message in out] == ["final"]
    # A's final: from A's arrival (1000) to B's call returning (1010.5), not from B's arrival.
    assert observed("earshot_final_latency_seconds", engine) == (1, 10.5)
    # A's chunk latency is taken once its answer is back; B's answer is still out.
    assert observed("earshot_chunk_processing_seconds", engine) == (1, 10.5)
    count, total = observed("earshot_real_time_factor", engine)
    assert count == 1
    assert total == pytest.approx(10.5 / 0.02)
    assert said.replied_for == 1000.0  # what the gateway measures the reply latency from
    clock.now = 1020.0
    out = await said.finish()  # B's partial, returned at 1020.5, is the next segment's first
    assert [message["type"] for message in out] == ["partial"]
    assert observed("earshot_first_partial_latency_seconds", engine) == (1, 10.5)
    assert observed("earshot_chunk_processing_seconds", engine) == (2, 10.5 + 10.5)
    assert said.replied_for == 1010.0


async def test_an_in_process_answer_is_timed_from_the_chunk_of_its_call(
    clock: FakeClock, stores: Stores
) -> None:
    engine = "fake-in-process"
    stream = InProcessStream(clock, [[], [Recognition("hello", is_final=True)]])
    said = transcription(stream, stores, engine)
    assert await said.feed(CHUNK) == []
    clock.now = 1010.0
    assert [message["type"] for message in await said.feed(CHUNK)] == ["final"]
    assert said.replied_for == 1010.0
    assert observed("earshot_final_latency_seconds", engine) == (1, 0.5)
    assert observed("earshot_chunk_processing_seconds", engine) == (2, 1.0)


async def test_an_answer_collected_while_the_client_is_quiet_is_timed_from_its_own_chunk(
    clock: FakeClock, stores: Stores
) -> None:
    engine = "fake-quiet"
    stream = PipelinedStream(clock, [[Recognition("hello", is_final=True)]])
    said = transcription(stream, stores, engine)
    assert await said.feed(CHUNK) == []  # the client's last chunk, at 1000: its answer is out
    assert said.unanswered
    clock.now = 1000.7  # no chunk comes; the gateway collects
    out = await said.collect()
    assert out == [{"type": "final", "text": "hello", "seq": 1}]
    assert not said.unanswered
    assert said.replied_for == 1000.0
    assert observed("earshot_final_latency_seconds", engine) == (1, pytest.approx(0.7))
    assert observed("earshot_chunk_processing_seconds", engine) == (1, pytest.approx(0.7))


async def test_chunks_short_of_the_recognisers_step_are_held_and_handed_over_together(
    clock: FakeClock, stores: Stores
) -> None:
    engine = "fake-holding"
    stream = HoldingStream(step=3 * len(CHUNK))
    said = transcription(stream, stores, engine)
    assert await said.feed(CHUNK) == []
    assert await said.feed(CHUNK) == []
    assert stream.calls == 0  # held, encoded: nothing decoded or handed over yet
    out = await said.feed(CHUNK)
    assert [message["type"] for message in out] == ["partial"]
    assert [s.size for s in stream.taken] == [3 * len(CHUNK)]
    assert observed("earshot_chunk_processing_seconds", engine)[0] == 3


async def test_a_refused_chunk_gives_back_the_held_audio_before_it(
    clock: FakeClock, stores: Stores
) -> None:
    stream = HoldingStream(step=3 * len(CHUNK), refuse={1})
    said = transcription(stream, stores, "fake-refused")
    earlier = [bytes([0x10 + i]) * len(CHUNK) for i in range(2)]
    for chunk in earlier:
        assert await said.feed(chunk) == []
    with pytest.raises(EngineOverloaded):
        await said.feed(bytes([0x7F]) * len(CHUNK))
    await said.finish()
    assert stream.tail is not None
    expected = codecs.decode(b"".join(earlier), codecs.Codec.ULAW)
    np.testing.assert_array_equal(stream.tail[: expected.size], expected)
    # The refused chunk itself is not in the stream's audio.
    assert stream.tail.size == expected.size
