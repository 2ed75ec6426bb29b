"""Talk SLIs: a speaker's audio to the first caption and to the final, per engine.

The clock of a segment starts at its first audible frame (silence before speech does not count)
and the final's at the audio that ended the segment; the room observes both when it sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from earshot.engines import loading
from earshot.engines.recognizers import EngineOverloaded, Recognizer
from earshot.events import Recognition
from earshot.gateways.talk import listening, messages
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.listening import Heard, PcmFrame, SpeakerAudio
from earshot.settings import Settings
from tests.hpb_double import SignalingDouble, eventually
from tests.talk_media import FRAME, RATE, syllables
from tests.told_recognizer import ToldRecognizer
from tests.unit.test_talk_rooms import double as double
from tests.unit.test_talk_rooms import publish, talk_settings, transcripts, until

FIRST = "earshot_talk_first_caption_latency_seconds"
FINAL = "earshot_talk_final_caption_latency_seconds"
SAMPLES = [f"{FIRST}_count", f"{FIRST}_sum", f"{FINAL}_count", f"{FINAL}_sum"]


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


def _frames(samples: np.ndarray) -> list[PcmFrame]:
    pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
    return [PcmFrame(pcm[i : i + FRAME], 1, RATE) for i in range(0, pcm.size - FRAME + 1, FRAME)]


async def test_a_segments_clock_starts_at_its_first_audible_frame(recognizer: Recognizer) -> None:
    heard: list[tuple[Recognition, Heard]] = []

    async def note(speaker: str, recognition: Recognition, when: Heard) -> None:
        heard.append((recognition, when))

    audio = SpeakerAudio("s1", recognizer, queue_frames=1000, on_recognition=note)
    silence = _frames(np.zeros(RATE, np.float32))
    speech = _frames(np.concatenate([syllables(2.0), np.zeros(RATE * 2, np.float32)]))
    audio.start()
    for frame in silence:
        audio.offer(frame)
    await asyncio.sleep(0.05)  # the silence is taken before the speech arrives
    before = time.perf_counter()
    audio.offer(speech[0])  # a swell starts from zero: the first frame may still be silent
    for frame in speech[1:5]:
        audio.offer(frame)
    after = time.perf_counter()
    for frame in speech[5:]:
        audio.offer(frame)
    await audio.close()
    assert heard, "the tiny engine recognised nothing"
    _, when = heard[0]
    assert before <= when.segment_started <= after
    assert when.segment_started <= when.chunk_arrived
    assert any(recognition.is_final for recognition, _ in heard)


async def test_a_room_observes_first_caption_and_final_latency_per_engine(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    before = {name: _sample(name, recognizer.name) for name in SAMPLES}
    rooms = Rooms(talk_settings(double), recognizer)
    try:
        alice = double.participant("room1", "alice", in_call=messages.IN_CALL | messages.WITH_AUDIO)
        bob = double.participant("room1", "bob", in_call=messages.IN_CALL)
        await rooms.transcribe("room1", "nc-bob", enable=True, lang="en")
        [bot] = double.clients()
        pc = await publish(double, alice, bot.session_id)
        try:
            await until(lambda: any(m["final"] for m in transcripts(bob)))
        finally:
            await pc.close()
    finally:
        await rooms.aclose()
    added = {name: _sample(name, recognizer.name) - before[name] for name in SAMPLES}
    finals = sum(1 for m in transcripts(bob) if m["final"])
    assert added[f"{FIRST}_count"] >= 1
    assert added[f"{FIRST}_sum"] > 0
    assert added[f"{FINAL}_count"] == finals
    assert added[f"{FINAL}_sum"] >= 0


def _sample(name: str, engine: str) -> float:
    return REGISTRY.get_sample_value(name, {"engine": engine}) or 0.0


class _LateStream:
    """Answers each chunk with the next call, as a pipelined recogniser (Triton) may."""

    def __init__(self) -> None:
        self._heard: list[float] = []
        self._answered = 0

    async def accept(self, samples: np.ndarray) -> list[Recognition]:
        said = self._answer_earlier()
        self._heard.append(time.perf_counter())
        return said

    async def finish(self, tail: np.ndarray | None = None) -> list[Recognition]:
        return self._answer_earlier()

    def _answer_earlier(self) -> list[Recognition]:
        said = [
            Recognition(f"chunk {n}", False, heard=h)
            for n, h in enumerate(self._heard, self._answered + 1)
        ]
        self._answered += len(said)
        self._heard.clear()
        return said


class _LateRecognizer:
    name = "late"
    sample_rate = RATE

    def open_stream(self) -> _LateStream:
        return _LateStream()

    async def aclose(self) -> None:
        return None


async def test_an_answer_returned_with_a_later_chunk_is_timed_from_its_own_chunk() -> None:
    heard: dict[str, Heard] = {}

    async def note(speaker: str, recognition: Recognition, when: Heard) -> None:
        heard[recognition.text] = when

    audio = SpeakerAudio("s1", _LateRecognizer(), queue_frames=10, on_recognition=note)
    speech = _frames(syllables(0.2))
    arrivals: list[float] = []
    audio.start()
    for frame in speech[:3]:  # one chunk each: the speaker's task takes a frame before the next
        arrivals.append(time.perf_counter())
        audio.offer(frame)
        await asyncio.sleep(0.02)
    await audio.close()
    # chunk 1 was answered with chunk 2's call, chunk 2 with chunk 3's, chunk 3 with finish()
    assert sorted(heard) == ["chunk 1", "chunk 2", "chunk 3"]
    for n, offered in enumerate(arrivals, 1):
        when = heard[f"chunk {n}"]
        assert offered <= when.chunk_arrived, n
        if n < len(arrivals):
            assert when.chunk_arrived < arrivals[n], n  # before the chunk whose call returned it
        assert when.segment_started <= when.chunk_arrived


class _PipelinedLateStream(_LateStream):
    """A :class:`_LateStream` that says it has answers out, and returns them when collected; its
    first ``refusals`` collections are refused (a re-START after a lost link, the model full)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self._refusals = refusals
        self.sent_chunks = 0
        self.answered_chunks = 0
        self.collections = 0

    async def accept(self, samples: np.ndarray) -> list[Recognition]:
        self.sent_chunks += 1
        return await super().accept(samples)

    @property
    def unanswered(self) -> bool:
        return bool(self._heard)

    @property
    def ready(self) -> bool:
        return False  # no answer comes between calls: the quiet speaker's collect takes them

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        return None

    async def collect(self) -> list[Recognition]:
        self.collections += 1
        if self._refusals:
            self._refusals -= 1
            raise EngineOverloaded("no room for the sequence")
        return self._answer_earlier()


class _PipelinedLateRecognizer(_LateRecognizer):
    def __init__(self, refusals: int = 0) -> None:
        self.streams: list[_PipelinedLateStream] = []
        self._refusals = refusals

    def open_stream(self) -> _PipelinedLateStream:
        self.streams.append(_PipelinedLateStream(self._refusals))
        return self.streams[-1]


async def test_a_quiet_speakers_answers_still_out_are_captioned_without_more_audio() -> None:
    heard: list[str] = []

    async def note(speaker: str, recognition: Recognition, when: Heard) -> None:
        heard.append(recognition.text)

    recognizer = _PipelinedLateRecognizer()
    audio = SpeakerAudio("s1", recognizer, queue_frames=10, on_recognition=note)
    audio.start()
    audio.offer(_frames(syllables(0.2))[0])  # then the speaker mutes: no frame, no close
    try:
        await eventually(lambda: heard == ["chunk 1"], 5.0, what="the collected caption")
        (stream,) = recognizer.streams
        assert stream.sent_chunks == 1  # collected, not answered by more audio
    finally:
        await audio.close()


async def test_a_refused_collection_loses_nothing_after_it() -> None:
    heard: list[str] = []

    async def note(speaker: str, recognition: Recognition, when: Heard) -> None:
        heard.append(recognition.text)

    recognizer = _PipelinedLateRecognizer(refusals=1)
    audio = SpeakerAudio("s1", recognizer, queue_frames=10, on_recognition=note)
    audio.start()
    speech = _frames(syllables(0.2))
    audio.offer(speech[0])
    await eventually(lambda: bool(recognizer.streams), 5.0, what="the stream")
    (stream,) = recognizer.streams
    # the first collection was refused, the second returned chunk 1's answer
    await eventually(lambda: stream.collections >= 2, 5.0, what="a second collection")
    audio.offer(speech[1])  # the speaker talks again: still recognised
    await eventually(lambda: stream.sent_chunks == 2, 5.0, what="the second chunk")
    await audio.close()
    assert heard == ["chunk 1", "chunk 2"]


@pytest.mark.parametrize("during_call", [False, True], ids=["between-frames", "while-busy"])
async def test_an_answer_told_between_calls_is_captioned_at_once_not_with_the_next_frame(
    monkeypatch: pytest.MonkeyPatch, during_call: bool
) -> None:
    # no quiet collection within the test: only the recogniser's word can bring the answer
    monkeypatch.setattr(listening, "QUIET_COLLECT_SECONDS", 600.0)
    heard: list[str] = []

    async def note(speaker: str, recognition: Recognition, when: Heard) -> None:
        heard.append(recognition.text)

    recognizer = ToldRecognizer(during_call, sample_rate=RATE)
    audio = SpeakerAudio("s1", recognizer, queue_frames=10, on_recognition=note)
    audio.start()
    audio.offer(_frames(syllables(0.2))[0])  # then the speaker goes on listening
    try:
        async with asyncio.timeout(10.0):
            await recognizer.opened.wait()
            (stream,) = recognizer.streams
            await stream.arrived.wait()
        if not during_call:
            await asyncio.sleep(0.05)  # the speaker's task waits for the next frame
            stream.answer()
        await eventually(lambda: heard == ["chunk 1"], 10.0, what="the told caption")
        assert (stream.sent_chunks, stream.collections) == (1, 1)
    finally:
        await audio.close()
