"""The benchmarks' chunk timer: a chunk is timed from when its audio was due, not from its call."""

from __future__ import annotations

import asyncio
import time

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
