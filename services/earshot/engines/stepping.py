"""An async :class:`Recognizer` over a :class:`DecodingClock`: the in-process clocked engine.

May do: start and stop the clock (its thread); resolve futures on the callers' event loop; count
steps in the engine metrics. Must not: run inference on the event loop, know which engine it drives.

A stream takes its decoder slot with its first audio, so a stream beyond the decoder's slots is
refused by ``accept`` at once with :class:`EngineOverloaded`, like a Triton sequence whose START is
refused, never queued behind the others. After its first chunk a stream hands audio to the clock
only when it completes one of the decoder's frames (:mod:`earshot.engines.gathering`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic

from earshot import metrics
from earshot.engines.clocking import ClockedStream, DecodingClock
from earshot.engines.gathering import FrameGatherer
from earshot.engines.recognizers import EngineError, Samples, SteppedDecoder, StreamT
from earshot.engines.windowing import DecodingWindow
from earshot.events import Recognition


class SteppingRecognizer(Generic[StreamT]):
    """Runs a :class:`SteppedDecoder` on a decoding clock; use it from one event loop."""

    def __init__(self, decoder: SteppedDecoder[StreamT]) -> None:
        """Start the clock's thread."""
        steps = metrics.ENGINE_STEPS.labels(decoder.name)
        advanced = metrics.ENGINE_STREAMS_ADVANCED.labels(decoder.name)
        live = metrics.ENGINE_STREAMS_LIVE.labels(decoder.name)
        busy = metrics.ENGINE_STEP_SECONDS.labels(decoder.name)

        def observe(stepped: int, alive: int, seconds: float) -> None:
            steps.inc()
            advanced.inc(stepped)
            live.inc(alive)
            busy.inc(seconds)

        self._clock = DecodingClock(decoder, observe=observe)
        self._closed = False

    @property
    def name(self) -> str:
        """The decoder's name."""
        return self._clock.decoder.name

    @property
    def sample_rate(self) -> int:
        """The decoder's sample rate."""
        return self._clock.decoder.sample_rate

    @property
    def clock(self) -> DecodingClock[StreamT]:
        """The clock (its step statistics)."""
        return self._clock

    def open_stream(self) -> SteppingStream[StreamT]:
        """Start recognising a new stream; it takes a decoder slot with its first audio."""
        if self._closed:
            raise EngineError("the recogniser is closed")
        return SteppingStream(self._clock)

    async def aclose(self) -> None:
        """Stop the clock; calls still waiting fail with :class:`EngineError`."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._clock.close)


class SteppingStream(Generic[StreamT]):
    """One stream of a :class:`SteppingRecognizer` (a ``RecognizerStream``)."""

    def __init__(self, clock: DecodingClock[StreamT]) -> None:
        self._clock = clock
        self._stream: ClockedStream[StreamT] | None = None
        self._finished = False
        decoder = clock.decoder
        frame = round(decoder.step_seconds * decoder.sample_rate)
        self._gathered = FrameGatherer(DecodingWindow(first=frame, step=frame))

    async def accept(self, samples: Samples) -> list[Recognition]:
        """Feed audio; see :meth:`RecognizerStream.accept`.

        Raises:
            EngineOverloaded: the first audio found every decoder slot taken (nothing was taken).
        """
        if self._finished:
            raise EngineError("audio arrived after the stream was finished")
        first = self._stream is None
        if self._stream is None:
            self._stream = self._clock.open()
        if self._gathered.add(samples) or first:
            return await self._submit(self._stream, self._gathered.take(), ends=False)
        return []  # it completes no frame: the model has nothing new to say

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        """End the stream; see :meth:`RecognizerStream.finish`. A second call returns nothing."""
        if self._finished:
            return []
        self._finished = True
        if self._stream is None:
            return []  # it never had a slot: nothing was recognised, nothing is pending
        if tail is not None and tail.size:
            self._gathered.add(tail)
        last = self._gathered.take()
        return await self._submit(self._stream, last if last.size else None, ends=True)

    async def _submit(
        self, stream: ClockedStream[StreamT], samples: Samples | None, *, ends: bool
    ) -> list[Recognition]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Recognition]] = loop.create_future()

        def settle(said: list[Recognition], error: EngineError | None) -> None:
            if future.done():  # the caller was cancelled
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(said)

        def reply(said: list[Recognition], error: EngineError | None) -> None:
            # RuntimeError: the caller's loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, said, error)

        self._clock.submit(stream, samples, ends=ends, reply=reply)
        return await future
