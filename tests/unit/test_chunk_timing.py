"""The benchmarks' chunk timer: a chunk is timed from when its audio was due, not from its call."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from bench.chunk_timing import ChunkTimer
from earshot.engines.recognizers import Samples
from earshot.events import Recognition

CALL_SECONDS = 0.02


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
