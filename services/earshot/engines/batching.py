"""An async :class:`Recognizer` over any synchronous :class:`BatchDecoder`, run on worker threads.

May do: start, stop and join its own threads; resolve futures on the callers' event loop.
Must not: run inference on the event loop, know which engine it drives, read settings other than
those handed to :meth:`BatchingRecognizer.from_settings`.

Work flows like this: ``accept`` takes a slot of a bounded queue (waiting at most the configured
timeout, then :class:`EngineOverloaded`), appends a job to its stream and marks the stream
runnable; a free worker takes every runnable stream (up to ``max_batch``), feeds each its jobs,
decodes them all in one batch and hands each job's result back to its event loop, which frees the
slot. A stream is runnable or on a worker, never both, so no stream decodes on two threads at once.

Given the decoder's :class:`~earshot.engines.windowing.DecodingWindow`, a stream holds its audio on
the event loop until the decoder's next step is ready and hands it over in one job: a 20 ms frame
that cannot make the decoder say anything costs no slot, no worker wake-up and no thread hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic

import numpy as np

from earshot import metrics
from earshot.engines.recognizers import (
    BatchDecoder,
    EngineError,
    EngineOverloaded,
    Samples,
    StreamT,
)
from earshot.engines.windowing import DecodingWindow
from earshot.events import Recognition
from earshot.settings import Settings

DEFAULT_MAX_BATCH = 16
# How far back the decoding cost per second of audio is measured (see BatchingRecognizer.load).
COST_WINDOW_SECONDS = 5.0


@dataclass(eq=False, slots=True)
class _Job:
    """One call waiting for a worker: audio to accept, the end of the stream, or both."""

    samples: Samples | None
    ends: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Recognition]]
    holds_slot: bool
    submitted: float = field(default_factory=time.monotonic)


@dataclass(eq=False, slots=True)
class _Work(Generic[StreamT]):
    """A stream's decoder state and its jobs not yet taken by a worker."""

    state: StreamT
    jobs: list[_Job] = field(default_factory=list)
    # In the run queue or on a worker: it then must not be queued again.
    scheduled: bool = False


_Batch = list[tuple[_Work[StreamT], list[_Job]]]


class BatchingRecognizer(Generic[StreamT]):
    """Runs a :class:`BatchDecoder` on worker threads that each decode many streams at once.

    Use it from one event loop; call :meth:`aclose` to stop the workers.
    """

    def __init__(
        self,
        decoder: BatchDecoder[StreamT],
        *,
        workers: int = 1,
        queue_size: int = 256,
        queue_timeout: float = 2.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        window: DecodingWindow | None = None,
    ) -> None:
        """Start the workers.

        Args:
            decoder: the engine's synchronous core; it must accept calls from several threads on
                different streams when ``workers`` is above one.
            workers: worker threads.
            queue_size: audio chunks waiting or being decoded, all streams together.
            queue_timeout: how long, in seconds, ``accept`` waits for a free slot.
            max_batch: the most streams one worker decodes in one call.
            window: when the decoder has a step to do; audio is then handed over once per step
                (None: every call's audio is handed over at once).
        """
        self._decoder = decoder
        self.window = window
        self._queue_timeout = queue_timeout
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(queue_size)
        self._lock = threading.Condition()
        self._runnable: deque[_Work[StreamT]] = deque()
        # Jobs not yet answered, oldest first (event-loop side only): the backlog's age.
        self._pending: deque[_Job] = deque()
        # Under the lock: the (when, decoding seconds, seconds of audio) of the batches of the last
        # COST_WINDOW_SECONDS, their sums, and the cost of a second of audio they make.
        self._costs: deque[tuple[float, float, float]] = deque()
        self._busy = 0.0
        self._audio = 0.0
        self._cost_per_second = 0.0
        self._closing = False
        self._exits: list[asyncio.Future[None]] = []
        self._threads = [
            threading.Thread(
                target=self._serve, args=(i,), name=f"earshot-{decoder.name}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        metrics.INFERENCE_WORKERS.labels(decoder.name).set(workers)
        metrics.INFERENCE_QUEUE_SLOTS.labels(decoder.name).set(queue_size)
        # Looked up once (per chunk is costly), and so at 0 before the first chunk.
        self._inflight = metrics.INFERENCE_INFLIGHT.labels(decoder.name)
        self._queue_timeouts = metrics.INFERENCE_QUEUE_TIMEOUTS.labels(decoder.name)
        self._decode_seconds = metrics.INFERENCE_DECODE_SECONDS.labels(decoder.name)

    @classmethod
    def from_settings(
        cls,
        decoder: BatchDecoder[StreamT],
        settings: Settings,
        *,
        window: DecodingWindow | None = None,
    ) -> BatchingRecognizer[StreamT]:
        """Start a recogniser sized by ``inference_workers`` and the ``inference_queue_*`` settings."""
        return cls(
            decoder,
            workers=settings.inference_workers,
            queue_size=settings.inference_queue_size,
            queue_timeout=settings.inference_queue_timeout_seconds,
            window=window,
        )

    @property
    def name(self) -> str:
        """The decoder's name."""
        return self._decoder.name

    @property
    def sample_rate(self) -> int:
        """The decoder's sample rate."""
        return self._decoder.sample_rate

    def open_stream(self) -> BatchedStream[StreamT]:
        """Start recognising a new stream (cheap: creating decoder state runs no inference)."""
        return BatchedStream(self, _Work(self._decoder.open()))

    def stream_load(self) -> float:
        """The share of the workers' time one stream sending audio in real time takes.

        It is what a second of audio cost to decode over the last :data:`COST_WINDOW_SECONDS` of
        decoding (wall time, so batching and a busy CPU count; a stream's last step is left out),
        divided by the workers; while nothing is decoded, the last such figure. 0 until the first
        decoding step (:meth:`warm_up` makes one). N streams at a share above 1/N are more than
        the workers can keep up with: the backlog grows and every stream falls behind.
        """
        with self._lock:
            return self._cost_per_second / len(self._threads)

    async def warm_up(self) -> None:
        """Decode two steps of silence on a stream of its own, so the engine is warm and the cost
        of a second of audio is known before the first caller's audio arrives."""
        window = self.window
        first, step = (window.first, window.step) if window else (self.sample_rate // 2,) * 2
        stream = self.open_stream()
        await stream.accept(np.zeros(first, np.float32))
        await stream.accept(np.zeros(step, np.float32))
        await stream.finish()

    def _count_cost(self, busy: float, audio: float) -> None:
        # Caller holds the lock.
        now = time.monotonic()
        self._costs.append((now, busy, audio))
        self._busy += busy
        self._audio += audio
        while self._costs[0][0] < now - COST_WINDOW_SECONDS:
            _, old_busy, old_audio = self._costs.popleft()
            self._busy -= old_busy
            self._audio -= old_audio
        if len(self._costs) == 1:  # start the sums afresh, so rounding never accumulates
            self._busy, self._audio = busy, audio
        if self._audio > 0:
            self._cost_per_second = self._busy / self._audio

    async def aclose(self) -> None:
        """Stop and join every worker; calls still waiting fail with :class:`EngineError`."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._closing:
                self._closing = True
                self._exits = [loop.create_future() for _ in self._threads]
                self._lock.notify_all()
        # A worker's last act is to resolve its future, so joining afterwards does not block.
        await asyncio.gather(*self._exits)
        for thread in self._threads:
            thread.join()
        # A closed pool has no workers and no slots (a process may open another after it).
        metrics.INFERENCE_WORKERS.labels(self._decoder.name).set(0)
        metrics.INFERENCE_QUEUE_SLOTS.labels(self._decoder.name).set(0)
        while self._runnable:
            work = self._runnable.popleft()
            self._post(work.jobs, None, EngineError("the recogniser was closed"))

    async def _submit(
        self, work: _Work[StreamT], samples: Samples | None, *, ends: bool = False
    ) -> list[Recognition]:
        # The end of a stream (with its last audio) takes no slot: it must always get through, also
        # when overloaded, or the stream's pending text would be lost.
        holds_slot = not ends
        if holds_slot:
            await self._take_slot()
        loop = asyncio.get_running_loop()
        job = _Job(samples, ends, loop, loop.create_future(), holds_slot)
        self._pending.append(job)
        with self._lock:
            closing = self._closing
            if not closing:
                work.jobs.append(job)
                self._schedule(work)
        if closing:
            self._settle(job, None, EngineError("the recogniser is closed"))
        return await job.future

    def backlog_seconds(self) -> float:
        """Seconds since the oldest audio not yet answered was handed over; 0 when none waits."""
        self._forget_answered()
        return time.monotonic() - self._pending[0].submitted if self._pending else 0.0

    def _forget_answered(self) -> None:
        pending = self._pending
        while pending and pending[0].future.done():
            pending.popleft()

    async def _take_slot(self) -> None:
        if not self._slots.locked():
            # A free slot is taken without suspending, so jobs queue in the order of the calls.
            await self._slots.acquire()
            self._inflight.inc()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self._queue_timeout)
            self._inflight.inc()
        except TimeoutError:
            self._queue_timeouts.inc()
            raise EngineOverloaded(
                f"the {self.name} inference queue stayed full for {self._queue_timeout:g} s"
            ) from None

    def _schedule(self, work: _Work[StreamT]) -> None:
        # Caller holds the lock.
        if work.jobs and not work.scheduled:
            work.scheduled = True
            self._runnable.append(work)
            self._lock.notify()

    def _serve(self, index: int) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)
            with self._lock:
                for work, _ in batch:
                    work.scheduled = False
                    self._schedule(work)
        self._exits[index].get_loop().call_soon_threadsafe(self._exits[index].set_result, None)

    def _next_batch(self) -> _Batch[StreamT] | None:
        with self._lock:
            while not self._runnable and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            batch: _Batch[StreamT] = []
            while self._runnable and len(batch) < self._max_batch:
                work = self._runnable.popleft()
                batch.append((work, work.jobs))
                work.jobs = []
            return batch

    def _run(self, batch: _Batch[StreamT]) -> None:
        started = time.perf_counter()
        answers = self._decode(batch)
        busy = time.perf_counter() - started
        self._decode_seconds.inc(busy)
        # Counted before anyone hears the answers, so a caller's next stream_load() includes this
        # step. Left out: a stream's last step (a step for however little audio is left, once) and
        # a step that failed (it says nothing of what decoding costs).
        jobs = [job for _, stream_jobs in batch for job in stream_jobs]
        failed = any(error is not None for _, _, error in answers)
        if not failed and not any(job.ends for job in jobs):
            samples = sum(job.samples.size for job in jobs if job.samples is not None)
            with self._lock:
                self._count_cost(busy, samples / self.sample_rate)
        for jobs, recognitions, error in answers:
            self._post(jobs, recognitions, error)

    def _decode(
        self, batch: _Batch[StreamT]
    ) -> list[tuple[list[_Job], list[Recognition] | None, EngineError | None]]:
        answers: list[tuple[list[_Job], list[Recognition] | None, EngineError | None]] = []
        fed: _Batch[StreamT] = []
        for work, jobs in batch:
            try:
                self._feed(work.state, jobs)
            except Exception as error:
                answers.append((jobs, None, _as_engine_error(error)))
            else:
                fed.append((work, jobs))
        try:
            results = self._decoder.decode([work.state for work, _ in fed])
            if len(results) != len(fed):
                raise EngineError(f"decode returned {len(results)} results for {len(fed)} streams")
        except Exception as error:
            return answers + [(jobs, None, _as_engine_error(error)) for _, jobs in fed]
        return answers + [
            (jobs, recognitions, None) for (_, jobs), recognitions in zip(fed, results, strict=True)
        ]

    def _feed(self, state: StreamT, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.samples is not None:
                self._decoder.accept(state, job.samples)
            if job.ends:
                self._decoder.finish(state)

    def _post(
        self, jobs: list[_Job], recognitions: list[Recognition] | None, error: EngineError | None
    ) -> None:
        # Several jobs of one stream decoded together: the step's results answer the last call.
        for position, job in enumerate(jobs, start=1):
            answer = recognitions if position == len(jobs) else []
            # RuntimeError: the caller's loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(self._settle, job, answer, error)

    def _settle(
        self, job: _Job, recognitions: list[Recognition] | None, error: EngineError | None
    ) -> None:
        if job.holds_slot:
            self._slots.release()
            self._inflight.dec()
        if not job.future.done():  # else the caller was cancelled
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(recognitions or [])
        self._forget_answered()


class BatchedStream(Generic[StreamT]):
    """One stream of a :class:`BatchingRecognizer` (a ``RecognizerStream``)."""

    def __init__(self, recognizer: BatchingRecognizer[StreamT], work: _Work[StreamT]) -> None:
        self._recognizer = recognizer
        self._work = work
        self._finished = False
        # Audio held on the event loop until the decoder's next step is ready (with a window).
        self._held: list[Samples] = []
        self._held_samples = 0
        self._fed = 0
        self._ready_at = 0 if recognizer.window is None else recognizer.window.first

    @property
    def wanted_samples(self) -> int:
        """Samples missing before a call hands audio to the decoder (a ``HoldingStream``)."""
        if self._recognizer.window is None:
            return 0
        return max(0, self._ready_at - self._fed - self._held_samples)

    async def accept(self, samples: Samples) -> list[Recognition]:
        """Feed audio; see :meth:`RecognizerStream.accept`."""
        if self._finished:
            raise EngineError("audio arrived after the stream was finished")
        window = self._recognizer.window
        if window is None:
            return await self._recognizer._submit(self._work, samples)
        self._held.append(samples)
        self._held_samples += samples.size
        if self._fed + self._held_samples < self._ready_at:
            return []  # the decoder could not say anything yet: no hand-off
        audio = self._take_held()
        try:
            recognitions = await self._recognizer._submit(self._work, audio)
        except EngineOverloaded:
            # Not taken: hold what came before this call again, as if it had not been made.
            self._held = [audio[: audio.size - samples.size]]
            self._held_samples = audio.size - samples.size
            raise
        self._fed += audio.size
        self._ready_at = window.ready_at(self._fed)
        return recognitions

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        """End the stream; see :meth:`RecognizerStream.finish`. A second call returns nothing."""
        if self._finished:
            return []
        self._finished = True
        if tail is not None and tail.size:
            self._held.append(tail)
            self._held_samples += tail.size
        last = self._take_held() if self._held_samples else None
        return await self._recognizer._submit(self._work, last, ends=True)

    def _take_held(self) -> Samples:
        held = self._held
        audio = held[0] if len(held) == 1 else np.concatenate(held)
        self._held = []
        self._held_samples = 0
        return audio


def _as_engine_error(error: Exception) -> EngineError:
    if isinstance(error, EngineError):
        return error
    wrapped = EngineError(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
