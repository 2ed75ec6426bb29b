"""The decoding clock steps every live Kyutai stream together, and refuses a stream beyond the slots."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from earshot.engines import kyutai, kyutai_checkpoints, tiny_kyutai
from earshot.engines.clocked_sequencing import ClockedSequences
from earshot.engines.clocking import ClockedStream, DecodingClock
from earshot.engines.kyutai import FRAME_SAMPLES, SAMPLE_RATE, KyutaiStream
from earshot.engines.recognizers import EngineError, EngineOverloaded, Samples
from earshot.engines.sequencing import OVERLOADED_MARK, Chunk, Outcome
from earshot.engines.stepping import SteppingRecognizer
from earshot.events import Recognition
from tests import triton_server

torch.set_num_threads(1)

_CHUNK = FRAME_SAMPLES // 2 + 40  # chunks that straddle frames


def _talk(seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    speech = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    return np.concatenate([speech, np.zeros(5 * SAMPLE_RATE // 2, np.float32), speech[:9000]])


def _pieces(audio: Samples, size: int = _CHUNK) -> list[Samples]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_kyutai.ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny-kyutai"))


def _decoder(checkpoint: Path, slots: int) -> kyutai.KyutaiDecoder:
    options = kyutai.KyutaiOptions(max_streams=slots, cuda_graphs=False)
    return kyutai.load_kyutai(
        model_dir=checkpoint, cache_dir=checkpoint, device="cpu", options=options
    )


@pytest.fixture
def reference(checkpoint: Path) -> Iterator[kyutai.KyutaiDecoder]:
    decoder = _decoder(checkpoint, 1)
    yield decoder
    decoder.close()


async def test_clocked_streams_say_what_the_unclocked_decoder_says_chunk_by_chunk(
    checkpoint: Path, reference: kyutai.KyutaiDecoder
) -> None:
    inputs = [_pieces(_talk(seed)) for seed in (1, 2, 3)]
    expected = [triton_server.in_process(reference, pieces) for pieces in inputs]
    recognizer = SteppingRecognizer(_decoder(checkpoint, 4))
    try:
        said = await asyncio.gather(*(triton_server.recognised(recognizer, p) for p in inputs))
    finally:
        await recognizer.aclose()

    assert all(any(r.is_final for r in e) for e in expected)
    assert all(map(triton_server.thinned, said, expected))


def test_a_thinned_answer_keeps_every_final_in_order_and_only_drops_partials() -> None:
    partial_a, partial_b = Recognition("a", False), Recognition("a b", False)
    final, later = Recognition("a b c", True), Recognition("d", True)
    expected = [partial_a, partial_b, final, later]
    assert triton_server.thinned(expected, expected)
    assert triton_server.thinned([partial_b, final, later], expected)
    assert not triton_server.thinned([partial_a, partial_b, later], expected)  # a final lost
    assert not triton_server.thinned([partial_a, partial_b, final], expected)
    assert not triton_server.thinned([partial_b, partial_a, final, later], expected)  # reordered
    assert not triton_server.thinned([Recognition("x", False), final, later], expected)


def _slowed(factor: float) -> Callable[[], float]:
    """A clock running ``factor`` times slower than real time: on a busy machine a test's own
    submissions then never look like a client behind real time."""
    start = time.monotonic()
    return lambda: start + (time.monotonic() - start) / factor


def _frames_stepped_alone(checkpoint: Path, audio: Samples) -> int:
    decoder = _decoder(checkpoint, 1)
    try:
        stream = decoder.open()
        decoder.accept(stream, audio)
        steps = 0
        while decoder.behind(stream):
            decoder.step([stream])
            steps += 1
        return steps
    finally:
        decoder.close()


class HeldFirstStep:
    """Records every step as (advanced, live); holds the clock's thread inside the first step
    until ``release`` is set."""

    def __init__(self) -> None:
        self.inside, self.release = threading.Event(), threading.Event()
        self.steps: list[tuple[int, int]] = []

    def observe(self, advanced: int, live: int, seconds: float) -> None:
        self.steps.append((advanced, live))
        if len(self.steps) == 1:
            self.inside.set()
            self.release.wait(10.0)


class Replies:
    """Collects the clock's answers: one release of ``answered`` and one entry in ``errors`` each."""

    def __init__(self) -> None:
        self.answered = threading.Semaphore(0)
        self.errors: list[EngineError | None] = []

    def reply(self, said: list[Recognition], error: EngineError | None) -> None:
        self.errors.append(error)
        self.answered.release()


def test_one_step_advances_every_stream_whose_frame_arrived_before_the_tick(
    checkpoint: Path,
) -> None:
    # The clock's thread is held inside the first step while eight more streams' audio arrives, as
    # audio of streams with different phases arrives between two ticks.
    audio = _talk(4)[: FRAME_SAMPLES * 3]
    frames = _frames_stepped_alone(checkpoint, audio)
    held = HeldFirstStep()
    clock = DecodingClock(_decoder(checkpoint, 9), observe=held.observe, clock=_slowed(4))
    replies = Replies()
    try:
        streams = [clock.open() for _ in range(9)]
        clock.submit(streams[0], audio, ends=False, reply=replies.reply)
        assert held.inside.wait(10.0)
        for stream in streams[1:]:
            clock.submit(stream, audio, ends=False, reply=replies.reply)
        held.release.set()
        for _ in streams:
            assert replies.answered.acquire(timeout=20.0)
    finally:
        held.release.set()
        clock.close()
    assert replies.errors == [None] * 9
    assert frames >= 3
    # One step per frame of audio, not one per stream: the first advanced the first stream alone,
    # each later one every stream still holding a frame.
    assert held.steps == [(1, 1)] + [(9, 9)] * (frames - 1) + [(8, 9)]
    assert clock.stats.steps == frames + 1
    assert clock.stats.ticks == frames + 1
    assert clock.stats.advanced == 9 * frames


def test_a_stream_that_fell_behind_catches_up_in_steps_of_its_own_within_one_tick(
    checkpoint: Path,
) -> None:
    # The clock is held inside a step while one stream of 20 ms chunks gets ten frames of audio
    # (as after a slow step) and another gets one: the next tick advances both, then steps the
    # lagging one alone until it holds no more than its one-frame chunks bring. The clock runs 16
    # times slower than real time, so the catch-up steps fit before the next tick on a busy machine.
    held = HeldFirstStep()
    clock = DecodingClock(_decoder(checkpoint, 2), observe=held.observe, clock=_slowed(16))
    replies = Replies()
    chunks = _pieces(_talk(9)[: FRAME_SAMPLES * 11], 480)
    try:
        lagging, steady = clock.open(), clock.open()
        for chunk in chunks[:4]:
            clock.submit(lagging, chunk, ends=False, reply=replies.reply)
        assert held.inside.wait(10.0)
        for chunk in chunks[4:44]:
            clock.submit(lagging, chunk, ends=False, reply=replies.reply)
        for chunk in chunks[:4]:
            clock.submit(steady, chunk, ends=False, reply=replies.reply)
        held.release.set()
        for _ in range(48):
            assert replies.answered.acquire(timeout=30.0)
    finally:
        held.release.set()
        clock.close()
    assert replies.errors == [None] * 48
    # The first tick; a tick of one regular step of both and eight catch-up steps of the lagging
    # stream, down to the one frame its chunks bring; a tick for that frame. Ten ticks without
    # catching up.
    assert held.steps == [(1, 1), (2, 2)] + [(1, 2)] * 9
    assert clock.stats.ticks == 3


def test_a_chunk_sent_before_the_previous_one_was_answered_does_not_hold_that_answer_back(
    checkpoint: Path,
) -> None:
    # A pipelining client (Triton's) sends a stream's next frame before the previous one is
    # answered: both wait at a tick, which steps one. The first is answered after that tick, the
    # second after the next one; the second must not hold the first's answer back a tick.
    held = HeldFirstStep()
    clock = DecodingClock(_decoder(checkpoint, 2), observe=held.observe, clock=_slowed(16))
    frame_one, frame_two = _pieces(_talk(12)[: FRAME_SAMPLES * 2], FRAME_SAMPLES)
    steps_when_answered: list[int] = []
    answered = threading.Semaphore(0)

    def reply(said: list[Recognition], error: EngineError | None) -> None:
        assert error is None
        steps_when_answered.append(len(held.steps))
        answered.release()

    try:
        other, pipelined = clock.open(), clock.open()
        clock.submit(other, frame_one, ends=False, reply=lambda said, error: None)
        assert held.inside.wait(10.0)
        clock.submit(pipelined, frame_one, ends=False, reply=reply)
        clock.submit(pipelined, frame_two, ends=False, reply=reply)
        held.release.set()
        for _ in range(2):
            assert answered.acquire(timeout=30.0)
    finally:
        held.release.set()
        clock.close()
    # The other stream's step, then one step per tick for the pipelined stream's frames.
    assert held.steps == [(1, 1), (1, 2), (1, 2)]
    assert steps_when_answered == [2, 3]


class _SlowDecoder(kyutai.KyutaiDecoder):
    """The tiny decoder with steps of at least ``seconds``, as a larger model's."""

    seconds = 0.03

    def step(self, streams: Sequence[KyutaiStream]) -> list[list[Recognition]]:
        started = time.monotonic()
        said = super().step(streams)
        time.sleep(max(0.0, self.seconds - (time.monotonic() - started)))
        return said


def test_catch_up_steps_only_fill_the_time_left_before_the_next_tick(checkpoint: Path) -> None:
    # Ten frames of backlog with 30 ms steps and 80 ms ticks: a tick has room for its own step and
    # one catch-up step, so the backlog is spread over ticks and no tick is delayed by catching up
    # (stepping the whole backlog at once would take 300 ms, four ticks' time).
    model = kyutai_checkpoints.load_checkpoint(checkpoint, device="cpu")
    decoder = _SlowDecoder(model, kyutai.KyutaiOptions(max_streams=1, cuda_graphs=False))
    ticks_of_steps: list[int] = []
    holder: list[DecodingClock[KyutaiStream]] = []

    def observe(advanced: int, live: int, seconds: float) -> None:
        ticks_of_steps.append(holder[0].stats.ticks)

    clock = DecodingClock(decoder, observe=observe)
    holder.append(clock)
    replies = Replies()
    try:
        stream = clock.open()
        # Forty 20 ms chunks at once (a burst of ten frames, as a client sends after a stall).
        for chunk in _pieces(_talk(11)[: FRAME_SAMPLES * 10], 480):
            clock.submit(stream, chunk, ends=False, reply=replies.reply)
        for _ in range(40):
            assert replies.answered.acquire(timeout=30.0)
    finally:
        clock.close()
    assert replies.errors == [None] * 40
    assert len(ticks_of_steps) == 10
    steps_per_tick = [ticks_of_steps.count(tick) for tick in sorted(set(ticks_of_steps))]
    assert max(steps_per_tick) <= 2, steps_per_tick
    assert len(steps_per_tick) >= 5


def test_a_client_behind_real_time_is_answered_at_once_and_caught_up_at_the_ticks(
    checkpoint: Path,
) -> None:
    # The client's own backlog is invisible to the clock (it sends one chunk per answer), so the
    # clock compares the audio sent with the time passed: after a 2 s stall (the clock's time
    # jumps), each frame the client then sends is answered at once, without waiting for a tick,
    # and the backlog is stepped at the next ticks, not one frame per tick.
    stall = [0.0]
    slowed = _slowed(16)  # ticks 1.28 s apart in real time: the backlog arrives between two

    def now() -> float:
        return slowed() + stall[0]

    clock = DecodingClock(_decoder(checkpoint, 1), clock=now)
    frame = _talk(10)[:FRAME_SAMPLES]
    answered = threading.Semaphore(0)

    def reply(said: list[Recognition], error: EngineError | None) -> None:
        assert error is None
        answered.release()

    try:
        stream = clock.open()
        for _ in range(3):  # on time: one frame per tick
            clock.submit(stream, frame, ends=False, reply=reply)
            assert answered.acquire(timeout=10.0)
        on_time = clock.stats
        clock.submit(stream, frame, ends=False, reply=reply)
        stall[0] = 2.0  # the process stalls while the frame waits for its tick
        assert answered.acquire(timeout=10.0)
        stalled = clock.stats
        for _ in range(10):  # the backlog of the stall, each sent as soon as answered
            clock.submit(stream, frame, ends=False, reply=reply)
            assert answered.acquire(timeout=10.0)
        answered_at_once = clock.stats
        deadline = time.monotonic() + 20.0
        while clock.stats.steps < on_time.steps + 11 and time.monotonic() < deadline:
            time.sleep(0.05)
        late = clock.stats
    finally:
        clock.close()
    assert on_time.steps == on_time.ticks == 3
    # Ten answers within less than a tick's real time: not one per tick.
    assert answered_at_once.ticks - stalled.ticks <= 1
    assert late.steps - on_time.steps == 11
    # The stalled frame's tick (or the first after the backlog, when the stall caught the frame
    # before its tick), then the backlog caught up in one or two.
    assert late.ticks - on_time.ticks <= 3


async def test_a_stream_beyond_the_slots_is_refused_at_once_and_may_retry_once_one_is_free(
    checkpoint: Path,
) -> None:
    recognizer = SteppingRecognizer(_decoder(checkpoint, 2))
    speech = _talk(5)[: FRAME_SAMPLES * 2]
    first, second, third = (recognizer.open_stream() for _ in range(3))
    try:
        await first.accept(speech)
        await second.accept(speech)
        steps = recognizer.clock.stats.steps
        with pytest.raises(EngineOverloaded, match="all 2 Kyutai batch slots are in use"):
            await third.accept(speech)
        assert recognizer.clock.stats.steps == steps, "the refusal waited for a step"
        await first.finish()
        await third.accept(speech)
    finally:
        for stream in (second, third):
            await stream.finish()
        await recognizer.aclose()


async def test_a_refused_stream_finishes_with_nothing_and_a_closed_clock_fails_calls(
    checkpoint: Path,
) -> None:
    recognizer = SteppingRecognizer(_decoder(checkpoint, 1))
    taken, refused = recognizer.open_stream(), recognizer.open_stream()
    await taken.accept(_talk(6)[:FRAME_SAMPLES])
    with pytest.raises(EngineOverloaded):
        await refused.accept(_talk(6)[:FRAME_SAMPLES])
    assert await refused.finish() == []
    await recognizer.aclose()
    with pytest.raises(EngineError, match="clock is stopped"):
        await taken.accept(_talk(6)[:FRAME_SAMPLES])


def _outcomes(sequences: ClockedSequences[KyutaiStream], chunks: list[Chunk]) -> list[Outcome]:
    done = threading.Semaphore(0)
    outcomes: dict[int, Outcome] = {}

    def answer_for(index: int) -> object:
        def answer(outcome: Outcome) -> None:
            outcomes[index] = outcome
            done.release()

        return answer

    for index, chunk in enumerate(chunks):
        sequences.submit(chunk, answer_for(index))  # type: ignore[arg-type]
        assert done.acquire(timeout=20.0)
    return [outcomes[i] for i in range(len(chunks))]


def test_clocked_sequences_number_segments_refuse_a_start_beyond_the_slots_and_free_on_end(
    checkpoint: Path, reference: kyutai.KyutaiDecoder
) -> None:
    pieces = _pieces(_talk(7), 4800)
    expected = triton_server.in_process(reference, pieces)
    sequences = ClockedSequences(_decoder(checkpoint, 1), idle_seconds=60.0)
    try:
        chunks = [
            Chunk(corrid=11, start=i == 0, end=False, audio=piece) for i, piece in enumerate(pieces)
        ]
        said = _outcomes(sequences, chunks)
        (refused,) = _outcomes(sequences, [Chunk(12, True, False, pieces[0])])
        (unknown,) = _outcomes(sequences, [Chunk(13, False, False, pieces[0])])
        (ended,) = _outcomes(sequences, [Chunk(11, False, True, np.zeros(0, np.float32))])
        (admitted,) = _outcomes(sequences, [Chunk(12, True, True, pieces[0])])
    finally:
        sequences.close()

    heard = [s for outcome in [*said, ended] for s in outcome.said]
    told = [Recognition(text=s.text, is_final=s.is_final) for s in heard]
    assert triton_server.thinned(told, expected)
    finals = [s.segment for s in heard if s.is_final]
    assert finals == list(range(len(finals)))
    assert len(finals) >= 2
    assert (refused.error or "").startswith(OVERLOADED_MARK)
    assert "must carry START" in (unknown.error or "")
    assert admitted.error is None
    assert len(sequences) == 0


def test_a_clocked_stream_can_be_weakly_referenced() -> None:
    """The clock keeps its open streams in a WeakSet: as a slotted generic dataclass a stream had no
    weakref slot on CPython 3.12.3 (the GPU machine's), and the clock's thread died on its first."""
    stream = ClockedStream(state=object())
    assert weakref.ref(stream)() is stream
