"""The benchmarks' chunk timer: a chunk is timed from when its audio was due, not from its call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from bench.chunk_timing import ChunkTimer
from earshot.engines.recognizers import Samples
from earshot.events import Recognition
from tests.told_recognizer import ToldStream

CALL_SECONDS = 0.02
ANSWER_AFTER = 0.05  # when the told stream's answer comes, after its chunk's call returned
NEXT_SLOT = 0.5  # when the next chunk is due


class _SlowStream:
    """A stream whose every call takes CALL_SECONDS and answers at once (as in process)."""

    async def accept(self, samples: Samples) -> list[Recognition]:
        await asyncio.sleep(CALL_SECONDS)
        return []

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        return []


def test_a_late_chunk_is_timed_from_its_slot_and_an_on_time_one_from_its_call() -> None:
    async def feed() -> list[tuple[float, float]]:
        timer = ChunkTimer(_SlowStream())
        chunk = np.zeros(320, dtype=np.float32)
        await timer.accept(chunk)
        await timer.accept(chunk, due=time.monotonic() - 0.5)  # its caller was busy for 0.5 s
        await timer.accept(chunk, due=time.monotonic() + 60)  # not due yet: timed from the call
        await timer.finish()
        return timer.timed

    (_, on_time), (_, late), (_, early) = asyncio.run(feed())
    assert CALL_SECONDS <= on_time < 0.5
    assert late >= 0.5 + CALL_SECONDS
    assert CALL_SECONDS <= early < 0.5


@pytest.mark.parametrize("pushed", [True, False], ids=["pushed", "next-call"])
def test_an_answer_between_calls_is_timed_to_the_collect_it_came_with_when_pushed(
    pushed: bool,
) -> None:
    async def feed() -> tuple[list[tuple[float, float]], ToldStream]:
        stream = ToldStream()
        timer = ChunkTimer(stream, pushed=pushed)
        chunk = np.zeros(320, dtype=np.float32)
        await timer.accept(chunk)  # sent, not answered by its call
        asyncio.get_running_loop().call_later(ANSWER_AFTER, stream.answer)
        assert await timer.until(time.monotonic() + NEXT_SLOT)
        await timer.accept(chunk)  # the next chunk, whose call returns what came before it
        timed = list(timer.timed)
        await timer.finish()
        return timed, stream

    timed, stream = asyncio.run(feed())
    ((_, first),) = timed  # the first chunk, timed before finish
    if pushed:
        assert ANSWER_AFTER <= first < NEXT_SLOT  # timed to the collect the listener prompted
        assert stream.collections == 1
    else:
        assert first >= NEXT_SLOT  # timed to the next chunk's call
        assert stream.collections == 0


@pytest.mark.parametrize("apart", [True, False], ids=["apart", "with-the-others"])
def test_the_chunks_finish_answers_are_kept_apart_when_asked(apart: bool) -> None:
    async def feed() -> ChunkTimer:
        stream = ToldStream()
        timer = ChunkTimer(stream, pushed=True)
        chunk = np.zeros(320, dtype=np.float32)
        await timer.accept(chunk)
        stream.answer()
        await timer.accept(chunk)  # returns the first chunk's answer; answered only by finish
        await timer.accept(chunk, due=time.monotonic() - 0.5)  # the same, due 0.5 s ago
        await timer.finish(apart=apart)
        return timer

    timer = asyncio.run(feed())
    if apart:
        assert len(timer.timed) == 1
        (_, second), (_, third) = timer.flushed
        assert third >= 0.5 > second
    else:
        assert (len(timer.timed), timer.flushed) == (3, [])


def test_a_wait_for_a_slot_already_past_says_the_chunk_goes_late() -> None:
    async def feed() -> tuple[bool, bool]:
        timer = ChunkTimer(_SlowStream())
        late = await timer.until(time.monotonic() - 0.01)
        return late, await timer.until(time.monotonic() + 0.01)

    in_time_for_past_slot, in_time_for_next_slot = asyncio.run(feed())
    assert not in_time_for_past_slot
    assert in_time_for_next_slot


class _TextOnSecondChunk(_SlowStream):
    """Answers in the call, as in process: text for its second chunk only."""

    calls = 0

    async def accept(self, samples: Samples) -> list[Recognition]:
        self.calls += 1
        await asyncio.sleep(CALL_SECONDS)
        return [Recognition("hello", is_final=False)] if self.calls == 2 else []


def test_in_process_the_chunk_whose_own_call_returned_text_is_timed_as_a_text_chunk() -> None:
    async def feed() -> tuple[list[tuple[float, float]], float]:
        timer = ChunkTimer(_TextOnSecondChunk())
        chunk = np.zeros(320, dtype=np.float32)
        await timer.accept(chunk)
        second = time.monotonic() - 0.3  # its caller was busy for 0.3 s
        await timer.accept(chunk, due=second)
        await timer.accept(chunk)
        await timer.finish()
        return timer.texts, second

    texts, second = asyncio.run(feed())
    ((due, latency),) = texts
    assert due == second
    assert latency >= 0.3 + CALL_SECONDS


@dataclass
class _HeardStream(ToldStream):
    """ToldStream whose recognitions name, as Triton's do, when their chunk's call handed it over."""

    heard_at: list[float] = field(default_factory=list)

    async def accept(self, samples: Samples) -> list[Recognition]:
        self.heard_at.append(time.perf_counter())
        return await super().accept(samples)

    def _returned(self) -> list[Recognition]:
        said = super()._returned()
        # ToldStream says "chunk n" for its n-th chunk, from 1.
        return [replace(r, heard=self.heard_at[int(r.text.split()[1]) - 1]) for r in said]


def test_pipelined_text_is_timed_for_the_chunk_that_handed_its_audio_over() -> None:
    async def feed() -> tuple[list[tuple[float, float]], float, float]:
        stream = _HeardStream()
        timer = ChunkTimer(stream, pushed=True)
        chunk = np.zeros(320, dtype=np.float32)
        first = time.monotonic() - 0.3
        await timer.accept(chunk, due=first)
        second = time.monotonic()
        await timer.accept(chunk, due=second)
        asyncio.get_running_loop().call_later(ANSWER_AFTER, stream.answer)
        await timer.until(time.monotonic() + NEXT_SLOT)  # both answers come with one collect
        await timer.finish()
        return timer.texts, first, second

    texts, first, second = asyncio.run(feed())
    assert [due for due, _ in texts] == [first, second]
    (_, of_first), (_, of_second) = texts
    assert of_first >= 0.3 + ANSWER_AFTER
    assert ANSWER_AFTER <= of_second < 0.3


def test_text_a_later_call_returns_is_timed_for_its_own_chunk() -> None:
    async def feed() -> tuple[list[tuple[float, float]], float, float]:
        stream = _HeardStream()
        timer = ChunkTimer(stream, pushed=False)  # answers come with the next call
        chunk = np.zeros(320, dtype=np.float32)
        first = time.monotonic() - 0.3
        await timer.accept(chunk, due=first)
        stream.answer()
        second = time.monotonic()
        await timer.accept(chunk, due=second)  # returns chunk 1's text, stamped with its call
        returned = time.monotonic()
        await timer.finish()
        return timer.texts, first, returned

    texts, first, returned = asyncio.run(feed())
    (due, latency), _ = texts
    assert due == first
    assert 0.3 <= latency <= returned - first


class _TextOnEnd(_SlowStream):
    """Says its text only when finished, stamped as heard by finish (the stream's last audio)."""

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        return [Recognition("the end", is_final=True, heard=time.perf_counter())]


def test_what_finish_decodes_counts_for_no_chunk() -> None:
    async def feed() -> list[tuple[float, float]]:
        timer = ChunkTimer(_TextOnEnd())
        await timer.accept(np.zeros(320, dtype=np.float32))
        await timer.finish()
        return timer.texts

    assert asyncio.run(feed()) == []


class _TwoForOneChunk(_SlowStream):
    """Answers its first chunk with a final and a partial, stamped as heard by that call."""

    async def accept(self, samples: Samples) -> list[Recognition]:
        heard = time.perf_counter()
        await asyncio.sleep(CALL_SECONDS)
        return [
            Recognition("one", is_final=True, heard=heard),
            Recognition("two", is_final=False, heard=heard),
        ]


def test_a_chunk_with_several_recognitions_is_timed_once() -> None:
    async def feed() -> list[tuple[float, float]]:
        timer = ChunkTimer(_TwoForOneChunk())
        await timer.accept(np.zeros(320, dtype=np.float32))
        return timer.texts

    assert len(asyncio.run(feed())) == 1
