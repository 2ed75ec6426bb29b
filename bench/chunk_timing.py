"""Per-chunk latency of a recogniser stream, each answer attributed to the chunk that caused it.

A chunk is timed from when its audio was complete (``due``: the real-time slot a caller's chunk
arrives in; by default the ``accept`` call itself) to the return of the call that brought its
answer. A caller still inside the previous call when a chunk is due sends it late, and that wait is
the chunk's too. An in-process stream answers a chunk in the ``accept`` call that takes it. A
:class:`~earshot.engines.recognizers.PipelinedStream` (Triton's) may return a chunk's answer
with a later call or with ``finish``: a chunk it sent is answered by the call after which the
stream's ``answered_chunks`` passes it; a chunk it held back (gathered towards a model frame)
sent nothing and is answered by its own call, as in process.

A caller that takes a pipelined stream's answers as they come, as the gateways do, waits for its
next chunk with :meth:`ChunkTimer.until`: an answer that comes meanwhile is collected then and
its chunk timed to that collect.

The chunks whose answer carried text are timed again on their own (:attr:`ChunkTimer.texts`): a
recognition belongs to the chunk whose request's answer carried it, the chunk that completed the
model's decoding step (its text may cover earlier chunks' audio too): the ``accept`` call that a
recognition's ``heard`` (Triton's) names, or, without ``heard``, the call that returned it (in
process, a chunk's text comes with its own call). What ``finish`` decodes (the stream's last audio
and its padding) counts for no chunk. This times how long the answers that carry text take to
serve, not how long speech takes to become text.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque

from earshot.engines.recognizers import PipelinedStream, RecognizerStream, Samples
from earshot.events import Recognition


class ChunkTimer:
    """A stream whose chunks are timed: :attr:`timed` holds (due at, latency) per chunk."""

    def __init__(self, stream: RecognizerStream, *, pushed: bool = False) -> None:
        """Time the chunks fed to ``stream`` through :meth:`accept`; with ``pushed``, a pipelined
        stream's answers are collected as they come while :meth:`until` waits."""
        self._stream = stream
        self._counted = stream if isinstance(stream, PipelinedStream) else None
        # Chunks sent whose answer has not come back: (index among sent, due at).
        self._out: deque[tuple[int, float]] = deque()
        self.timed: list[tuple[float, float]] = []
        #: (due at, latency) of each chunk whose answer carried text, timed to the call that
        #: returned its first recognition
        self.texts: list[tuple[float, float]] = []
        # Per accept call, in order: when it began (time.perf_counter(), as ``heard``) and its
        # chunk's due time (time.monotonic()).
        self._began: list[float] = []
        self._due: list[float] = []
        self._finish_began = float("inf")
        self._with_text: set[int] = set()
        #: (due at, latency) of the chunks :meth:`finish` answered, when it was told to keep them
        #: apart from :attr:`timed`
        self.flushed: list[tuple[float, float]] = []
        self._pipelined = stream if pushed and isinstance(stream, PipelinedStream) else None
        self._answered = asyncio.Event()
        if self._pipelined is not None:
            self._pipelined.on_answer(self._answered.set)

    async def accept(self, samples: Samples, due: float | None = None) -> list[Recognition]:
        """Feed a chunk whose audio was complete at ``due`` (``time.monotonic()``; default now)."""
        since = time.monotonic() if due is None else min(due, time.monotonic())
        sent_before = self._counted.sent_chunks if self._counted is not None else 0
        self._began.append(time.perf_counter())
        self._due.append(since)
        said = await self._stream.accept(samples)
        returned = time.monotonic()
        self._time_texts(said, returned, own=len(self._began) - 1)
        if self._counted is not None and self._counted.sent_chunks > sent_before:
            self._out.append((sent_before, since))
        else:
            self.timed.append((since, returned - since))
        self._settle(returned)
        return said

    async def until(self, due: float) -> bool:
        """Wait until ``due`` (``time.monotonic()``), collecting the answers that come meanwhile
        when they are pushed; False when ``due`` had passed already, or passed while a collect
        ran (the next chunk goes late either way)."""
        pipelined = self._pipelined
        while (left := due - time.monotonic()) > 0:
            if pipelined is None:
                await asyncio.sleep(left)
                return True
            if not pipelined.ready:
                try:
                    async with asyncio.timeout(left):
                        await self._answered.wait()
                except TimeoutError:
                    return True
            self._answered.clear()
            said = await pipelined.collect()
            self._time_texts(said, time.monotonic(), own=None)
            self._settle(time.monotonic())
        return False

    async def finish(self, *, apart: bool = False) -> list[Recognition]:
        """Finish the stream; the chunks it answers are timed to its return, in :attr:`timed` or,
        with ``apart``, in :attr:`flushed` (their wait includes the end-of-stream flush)."""
        self._finish_began = time.perf_counter()
        said = await self._stream.finish()
        self._time_texts(said, time.monotonic(), own=None)
        self._settle(time.monotonic(), into=self.flushed if apart else self.timed)
        return said

    def _time_texts(self, said: list[Recognition], returned: float, *, own: int | None) -> None:
        """Time the chunks whose first text ``said`` holds (``own``: the returning call's chunk)."""
        for recognition in said:
            if not recognition.text:
                continue
            if recognition.heard is None:
                chunk = own
            elif recognition.heard >= self._finish_began:
                chunk = None
            else:
                chunk = bisect.bisect_right(self._began, recognition.heard) - 1
            if chunk is None or chunk < 0 or chunk in self._with_text:
                continue
            self._with_text.add(chunk)
            self.texts.append((self._due[chunk], returned - self._due[chunk]))

    def _settle(self, now: float, *, into: list[tuple[float, float]] | None = None) -> None:
        answered = self._counted.answered_chunks if self._counted is not None else 0
        timed = self.timed if into is None else into
        while self._out and self._out[0][0] < answered:
            _, since = self._out.popleft()
            timed.append((since, now - since))
