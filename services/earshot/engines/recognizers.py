"""The recogniser protocol every engine implements, and the errors it raises.

A :class:`Recognizer` is long-lived and shared by every stream of a process; a
:class:`RecognizerStream` belongs to one audio stream (one call, one speaker). Audio is float32 mono
PCM in [-1, 1) at the recogniser's own :attr:`Recognizer.sample_rate`: resampling is the caller's job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from earshot.events import Recognition

Samples = npt.NDArray[np.float32]


class EngineError(Exception):
    """A recogniser failed; the stream cannot go on."""


class EngineOverloaded(EngineError):
    """The engine's inference queue stayed full for longer than the configured wait.

    Retryable: the client should come back later.
    """


class RecognizerStream(Protocol):
    """One audio stream being recognised."""

    async def accept(self, samples: Samples) -> list[Recognition]:
        """Feed audio and return what the recogniser said since the last call (often nothing).

        In-process engines answer a chunk in the call that takes it; an engine may also return a
        chunk's recognitions with a later call, or with :meth:`finish` (Triton pipelines its
        requests, see :mod:`earshot.engines.triton`). Recognitions always come in order.

        Raises:
            EngineOverloaded: the audio was not taken; nothing of the stream is lost so far.
            EngineError: the stream is broken.
        """
        ...

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        """End the stream: accept ``tail``, flush the audio still held, finalise a pending partial.

        Ending never waits for room in an inference queue, also when it carries ``tail`` (the last
        audio, e.g. what a resampler held back): a stream refused for overload still gets its
        pending text finalised. Always call it, also after an error: it frees the stream's
        resources. The returned list ends with a final when the stream had unfinalised text.
        """
        ...


#: How long a caller whose audio pauses (a client done talking, a muted speaker) waits for more
#: before it collects the answers of a :class:`PipelinedStream` that are still out.
QUIET_COLLECT_SECONDS = 0.1


@runtime_checkable
class PipelinedStream(Protocol):
    """A stream that may return a chunk's answer with a later call: it counts chunks to tell when.

    Chunks are answered in order: the ``i``-th chunk sent (from 0) once :attr:`answered_chunks`
    exceeds ``i``. A call that sends nothing (audio held back) is answered by that call.

    An answer that comes after the call that sent its chunk returned would wait for the caller's
    next call: a caller that can take answers between its chunks registers a listener
    (:meth:`on_answer`) and calls :meth:`collect` when it is told, or before it next waits for
    audio while :attr:`ready`. A caller whose audio stops for :data:`QUIET_COLLECT_SECONDS` while
    :attr:`unanswered` calls :meth:`collect` too (again after each such pause), so a client waiting
    for its last final hears it whatever the listener did, and a request that timed out fails the
    stream.
    """

    @property
    def unanswered(self) -> bool:
        """Whether answers of chunks sent have not been returned by a call yet."""
        ...

    @property
    def ready(self) -> bool:
        """Whether :meth:`collect` would return an answer now."""
        ...

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        """Have ``listener`` called (on the event loop, no argument) when an answer becomes
        :attr:`ready` while no call of the stream runs; None: stop.

        The listener must not block: it wakes the caller, which then calls :meth:`collect`.
        """
        ...

    async def collect(self) -> list[Recognition]:
        """Return the answers complete now, in order, sending no audio.

        Raises:
            EngineError: as :meth:`RecognizerStream.accept` (an error answer, or none in time).
        """
        ...

    @property
    def sent_chunks(self) -> int:
        """How many calls sent audio (or the end of the stream) to the engine."""
        ...

    @property
    def answered_chunks(self) -> int:
        """How many of :attr:`sent_chunks` have had their answers returned by a call."""
        ...


@runtime_checkable
class HoldingStream(Protocol):
    """A stream that holds audio until its model's next step can use it, and says how much that is.

    Audio short of the step only waits in the stream, so a caller may hold it as long itself
    (encoded, before decoding and resampling it: :class:`~earshot.audio.holding.HeldAudio`).
    """

    @property
    def wanted_samples(self) -> int:
        """Samples still missing before :meth:`RecognizerStream.accept` would hand audio to the
        model (0: any call may)."""
        ...


class Recognizer(Protocol):
    """A recognition engine: opens streams at its own sample rate."""

    @property
    def name(self) -> str:
        """The engine name used in configuration and metrics labels (e.g. ``paraformer``)."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate, in Hz, of the audio :meth:`RecognizerStream.accept` takes."""
        ...

    def open_stream(self) -> RecognizerStream:
        """Start recognising a new stream."""
        ...

    async def aclose(self) -> None:
        """Stop the engine's workers; streams still open fail afterwards."""
        ...


StreamT = TypeVar("StreamT")


class BatchDecoder(Protocol[StreamT]):
    """The synchronous core of an engine: per-stream state plus one batched decode step.

    No asyncio and no threads of its own: :mod:`earshot.engines.batching` runs it on worker threads
    for the in-process recogniser, and the Triton models in ``model-repo/`` call it from ``execute``.
    A stream is used by one thread at a time.
    """

    @property
    def name(self) -> str:
        """The engine name (``paraformer``, ``kyutai``)."""
        ...

    @property
    def sample_rate(self) -> int:
        """The rate, in Hz, of the audio :meth:`accept` takes."""
        ...

    def open(self) -> StreamT:
        """Create the state of a new stream."""
        ...

    def accept(self, stream: StreamT, samples: Samples) -> None:
        """Append audio to a stream (cheap: no inference)."""
        ...

    def finish(self, stream: StreamT) -> None:
        """Mark the stream's input as ended; its next decode flushes it and finalises its text."""
        ...

    def decode(self, streams: Sequence[StreamT]) -> list[list[Recognition]]:
        """Run inference on every stream that has enough audio, as one batch.

        Returns:
            For each stream, in order, the recognitions this step produced: a partial when the
            segment's text changed, a final at an endpoint (the stream then starts a new segment)
            or after :meth:`finish`.
        """
        ...


class SteppedDecoder(BatchDecoder[StreamT], Protocol[StreamT]):
    """A :class:`BatchDecoder` whose model advances every stream by one fixed frame per step.

    :mod:`earshot.engines.clocking` steps it on a clock of :attr:`step_seconds`, so that one model
    step advances every stream that has audio waiting, whatever the phase its audio arrives with.
    """

    @property
    def step_seconds(self) -> float:
        """The audio one step consumes per stream: the period of the clock that drives it."""
        ...

    def behind(self, stream: StreamT) -> bool:
        """Whether a step has work for the stream: a full frame, or the flush of a finished one."""
        ...

    def frames(self, stream: StreamT) -> int:
        """The full frames of the stream's audio waiting for steps."""
        ...

    def step(self, streams: Sequence[StreamT]) -> list[list[Recognition]]:
        """Advance every given stream that is :meth:`behind` by one frame, in one model step.

        Returns:
            For each stream, in order, the finals this step produced (a finished stream's last one
            once it is flushed); partials are left to :meth:`report`.
        """
        ...

    def report(self, stream: StreamT) -> list[Recognition]:
        """The stream's partial, when its text changed since it was last reported."""
        ...
