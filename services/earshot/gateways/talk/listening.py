"""One speaker's audio on its way to the recogniser: decoded frames in, recognitions out.

Frames from aiortc (Opus decoded to s16, 48 kHz, stereo or mono) are queued as they arrive without
blocking the WebRTC receiver; a full queue drops the frame and counts it. One task takes what is
queued, downmixes each frame by its own layout, resamples with one stateful resampler and feeds the
speaker's recogniser stream. The answers a pipelined recogniser (Triton) gives after the call that
sent their chunk are collected as they come: its listener puts a wake-up in the queue. Closing
finishes the stream, so a pending partial becomes a final.
Each recognition is reported with its :class:`Heard` times (when its segment's audio began to
arrive, when the audio that produced it arrived), from which the room measures caption latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from earshot import metrics
from earshot.audio.downmixing import InvalidLayout, downmix_s16
from earshot.audio.resampling import StreamResampler
from earshot.engines.recognizers import (
    QUIET_COLLECT_SECONDS,
    EngineError,
    EngineOverloaded,
    PipelinedStream,
    Recognizer,
)
from earshot.events import Recognition
from earshot.gateways.arrivals import ChunkArrivals

log = logging.getLogger(__name__)

GATEWAY = "talk"
#: A frame louder than this (-40 dBFS peak) may be speech: it starts a segment's latency clock.
AUDIBLE_PEAK = 0.01


@dataclass(frozen=True, slots=True)
class Heard:
    """When the audio behind a recognition arrived (``time.perf_counter`` seconds)."""

    segment_started: float
    chunk_arrived: float


OnRecognition = Callable[[str, Recognition, Heard], Awaitable[None]]


class _Wake(enum.Enum):
    """Queued by a pipelined stream's listener: an answer came between calls, to collect."""

    ANSWER = enum.auto()


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """A decoded frame: interleaved s16 samples, its channel count and sample rate."""

    samples: npt.NDArray[np.int16]
    channels: int
    rate: int


class SpeakerAudio:
    """Recognises one speaker; owns its queue, its recogniser stream and its task."""

    def __init__(
        self,
        speaker: str,
        recognizer: Recognizer,
        *,
        queue_frames: int,
        on_recognition: OnRecognition,
    ) -> None:
        self.speaker = speaker
        self._recognizer = recognizer
        self._queue: asyncio.Queue[tuple[PcmFrame, float] | _Wake | None] = asyncio.Queue(
            queue_frames
        )
        self._answer_queued = False
        self._on_recognition = on_recognition
        self._resampler: StreamResampler | None = None
        self._task: asyncio.Task[None] | None = None
        self._segment_started: float | None = None
        self._chunk_arrived = 0.0
        self._arrivals = ChunkArrivals()
        self.frames = 0
        self.dropped = 0

    def start(self) -> None:
        """Start recognising (frames offered before are kept)."""
        self._task = asyncio.create_task(self._run(), name=f"talk-speaker-{self.speaker}")

    def offer(self, frame: PcmFrame) -> None:
        """Queue a frame without waiting; a full queue drops it (and counts it)."""
        self.frames += 1
        try:
            self._queue.put_nowait((frame, time.perf_counter()))
        except asyncio.QueueFull:
            self.dropped += 1
            metrics.TALK_FRAMES_DROPPED.inc()

    async def close(self) -> None:
        """Recognise what is queued, finish the stream (its last final is reported) and stop."""
        if self._task is None:
            return
        # The end marker must get in even when the queue is full: make room by dropping a frame.
        while True:
            try:
                self._queue.put_nowait(None)
                break
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    if self._queue.get_nowait() is _Wake.ANSWER:
                        self._answer_queued = False  # finish returns the answer
                        continue
                    self.dropped += 1
                    metrics.TALK_FRAMES_DROPPED.inc()
        try:
            await self._task
        finally:
            self._task = None

    async def _run(self) -> None:
        engine = self._recognizer.name
        active = metrics.ACTIVE_STREAMS.labels(GATEWAY, engine)
        active.inc()
        stream = self._recognizer.open_stream()
        pipelined = stream if isinstance(stream, PipelinedStream) else None
        if pipelined is not None:
            pipelined.on_answer(self._answer_came)
        try:
            while (samples := await self._next_audio(pipelined)) is not None:
                if samples.size:
                    self._arrivals.hand(self._chunk_arrived)
                    await self._accept(stream.accept(samples), samples.size)
                elif pipelined is not None and pipelined.ready:
                    # a wake-up taken with frames that gave no audio (held back, or dropped)
                    await self._accept(pipelined.collect(), 0)
            if self._resampler is not None:
                tail = self._resampler.flush()
                if tail.size:
                    self._arrivals.hand(self._chunk_arrived)
                    await self._accept(stream.accept(tail), tail.size)
        except EngineError as exc:
            metrics.ENGINE_ERRORS.labels(GATEWAY, engine).inc()
            log.error("speaker %s: recognition failed: %s", self.speaker, exc)
        finally:
            if pipelined is not None:
                pipelined.on_answer(None)
            try:
                await self._report(await stream.finish())
            finally:
                active.dec()

    def _answer_came(self) -> None:
        """The stream's listener: wake the task with a marker, once until it is taken; a full
        queue has frames to wake it, whose call returns the answer."""
        if not self._answer_queued:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_Wake.ANSWER)
                self._answer_queued = True

    async def _next_audio(
        self, pipelined: PipelinedStream | None
    ) -> npt.NDArray[np.float32] | None:
        """Everything queued now, as one chunk at the engine's rate; None at the end."""
        frames = [await self._next_frame(pipelined)]
        while frames[-1] is not None and not self._queue.empty():
            if (item := self._queue.get_nowait()) is _Wake.ANSWER:
                self._answer_queued = False  # this chunk's call returns it
            else:
                frames.append(item)
        end = frames[-1] is None
        chunks = []
        for frame, arrived in filter(None, frames):
            chunk = self._convert(frame)
            chunks.append(chunk)
            self._chunk_arrived = arrived
            if self._segment_started is None and chunk.size and _audible(chunk):
                self._segment_started = arrived
        if end and not chunks:
            return None
        if end:
            # Put the marker back: this chunk is recognised first, the next call ends the stream.
            self._queue.put_nowait(None)
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    async def _next_frame(self, pipelined: PipelinedStream | None) -> tuple[PcmFrame, float] | None:
        """The next frame queued (None: the end); the answers that come meanwhile are reported as
        they come (a muted speaker's last final is captioned at once). While answers are out, the
        stream is also collected after each :data:`QUIET_COLLECT_SECONDS` without a frame, so a
        request that timed out fails it."""
        while True:
            try:
                if pipelined is not None and pipelined.unanswered:
                    async with asyncio.timeout(QUIET_COLLECT_SECONDS):
                        item = await self._queue.get()
                else:
                    item = await self._queue.get()
            except TimeoutError:
                pass  # quiet with answers out: collect them
            else:
                if item is not _Wake.ANSWER:
                    return item
                self._answer_queued = False
            if pipelined is not None:
                # a re-START after a lost link may be refused: handled as a refused chunk
                await self._accept(pipelined.collect(), 0)

    def _convert(self, frame: PcmFrame) -> npt.NDArray[np.float32]:
        try:
            mono = downmix_s16(frame.samples, channels=frame.channels)
        except InvalidLayout as exc:
            metrics.PROTOCOL_ERRORS.labels(GATEWAY, "invalid_layout").inc()
            log.warning("speaker %s: dropped a frame: %s", self.speaker, exc)
            return np.zeros(0, np.float32)
        if self._resampler is None:
            self._resampler = StreamResampler(frame.rate, self._recognizer.sample_rate)
        metrics.AUDIO_SECONDS_RECEIVED.labels(GATEWAY).inc(mono.size / frame.rate)
        return self._resampler.process(mono)

    async def _accept(self, pending: Awaitable[list[Recognition]], size: int) -> None:
        try:
            recognitions = await pending
        except EngineOverloaded:
            metrics.OVERLOAD_REJECTIONS.labels(GATEWAY, self._recognizer.name).inc()
            log.warning("speaker %s: engine overloaded, %d samples lost", self.speaker, size)
            return
        await self._report(recognitions)

    async def _report(self, recognitions: list[Recognition]) -> None:
        for recognition in recognitions:
            started = self._segment_started
            if recognition.is_final:
                self._segment_started = None  # the next audio begins a new segment
            if recognition.text:
                # the chunk behind it: a pipelined recogniser (Triton) may answer with a later call
                arrived = self._arrivals.of(recognition, self._chunk_arrived)
                heard = Heard(min(started or arrived, arrived), arrived)
                await self._on_recognition(self.speaker, recognition, heard)


def _audible(samples: npt.NDArray[np.float32]) -> bool:
    return float(np.max(np.abs(samples))) > AUDIBLE_PEAK
