"""Per-chunk latency of a recogniser stream, each answer attributed to the chunk that caused it.

A chunk is timed from when its audio was complete (``due``: the real-time slot a caller's chunk
arrives in; by default the ``accept`` call itself) to the return of the call that brought its
answer. A caller still inside the previous call when a chunk is due sends it late, and that wait is
the chunk's too. An in-process stream answers a chunk in the ``accept`` call that takes it. A
:class:`~earshot.engines.triton.TritonStream` pipelines its requests and may return a chunk's answer
with a later call or with ``finish``: a chunk it sent to Triton is answered by the call after which
the stream's ``answered_chunks`` passes it; a chunk it held back (gathered towards a model frame)
sent nothing and is answered by its own call, as in process.
"""

from __future__ import annotations

import time
from collections import deque

from earshot.engines.recognizers import RecognizerStream, Samples
from earshot.engines.triton import TritonStream
from earshot.events import Recognition


class ChunkTimer:
    """A stream whose chunks are timed: :attr:`timed` holds (due at, latency) per chunk."""

    def __init__(self, stream: RecognizerStream) -> None:
        """Time the chunks fed to ``stream`` through :meth:`accept`."""
        self._stream = stream
        self._triton = stream if isinstance(stream, TritonStream) else None
        # Chunks sent to Triton whose answer has not come back: (index among sent, due at).
        self._out: deque[tuple[int, float]] = deque()
        self.timed: list[tuple[float, float]] = []

    async def accept(self, samples: Samples, due: float | None = None) -> list[Recognition]:
        """Feed a chunk whose audio was complete at ``due`` (``time.monotonic()``; default now)."""
        since = time.monotonic() if due is None else min(due, time.monotonic())
        sent_before = self._triton.sent_chunks if self._triton is not None else 0
        said = await self._stream.accept(samples)
        returned = time.monotonic()
        if self._triton is not None and self._triton.sent_chunks > sent_before:
            self._out.append((sent_before, since))
        else:
            self.timed.append((since, returned - since))
        self._settle(returned)
        return said

    async def finish(self) -> list[Recognition]:
        """Finish the stream; the chunks it answers are timed to its return."""
        said = await self._stream.finish()
        self._settle(time.monotonic())
        return said

    def _settle(self, now: float) -> None:
        answered = self._triton.answered_chunks if self._triton is not None else 0
        while self._out and self._out[0][0] < answered:
            _, since = self._out.popleft()
            self.timed.append((since, now - since))
