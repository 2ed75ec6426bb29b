"""Recognition on NVIDIA Triton: every stream of a process multiplexed over one gRPC stream.

May do: gRPC I/O on the event loop; own and stop the tasks that keep the connection and keepalives.
Must not: run inference, read the environment (the caller passes the URL and options).

Each audio stream is one Triton *sequence* (a random 62-bit base plus a counter, so gateways sharing
a server do not collide): START rides on its first chunk, END on :meth:`TritonStream.finish`. Every
request asks for an empty final response, so the stream knows when a chunk's responses are
complete. Responses are routed by request id, errors included (the raw gRPC stub is used because
tritonclient drops the id of an error response).

Requests are pipelined: sending a stream's chunk never waits for the answers of the chunks before
it (Triton's sequence batcher keeps a sequence's requests in order). Waiting for them would hold
the stream's next chunk for a whole round trip; for a model stepped on a clock (Kyutai) that is up
to a tick plus a step, so the next frame reaches Triton after its tick. What a chunk makes the
model say is returned in order, and only whole (all of a chunk's responses together):

* :meth:`TritonStream.accept` sends the chunk, then waits for the answers still out, but at most
  half the chunk's audio duration (:data:`ANSWER_WAIT_SHARE`), and returns every answer complete
  by then. A real-time caller's next chunk arrives one chunk duration later, so the wait never
  makes it late; an answer arriving within the wait is returned at once, a later one by
  :meth:`TritonStream.collect` when the stream's listener (:meth:`TritonStream.on_answer`) has
  the caller collect it as it comes, else with the next call (at most half a chunk later than it
  arrived), with ``collect`` once the caller's audio pauses (see
  :data:`~earshot.engines.recognizers.QUIET_COLLECT_SECONDS`), or with ``finish``. With more than
  :data:`MAX_IN_FLIGHT` requests out, it waits for the oldest: a Triton that falls behind holds
  the caller up rather than queueing audio until requests time out, and
  :meth:`TritonRecognizer.remote_backlog_seconds` says how far behind it is (a gateway refuses new
  streams by it).
* The first chunk of a sequence (START) is the exception: it waits for its answer, so a model
  with no room refuses it at once (:class:`EngineOverloaded` from that call) before any other
  chunk is sent on a sequence that does not exist.
* :meth:`TritonStream.finish` sends END and waits for every answer still out.
* A chunk unanswered ``request_timeout_seconds`` after it was sent fails the stream with
  :class:`EngineError` at the next call (or within ``finish``).

:attr:`TritonStream.sent_chunks` and :attr:`TritonStream.answered_chunks` let a caller that times
chunks attribute each answer to the call that sent the chunk. Every recognition returned carries in
:attr:`~earshot.events.Recognition.heard` the ``time.perf_counter()`` of the call that handed over
the audio of its request (the ``accept`` that sent it, for audio gathered towards a model frame the
one that completed the frame; ``finish`` for the END; the earliest such call for audio resent after
a lost connection). ``earshot_triton_round_trip_seconds``
is observed when a chunk's last response arrives, whenever it is returned.

When the gRPC stream breaks (Triton restarted, a proxy cut it), the recogniser reconnects with
backoff; a stream whose sequence lived on the broken connection starts a new sequence with its next
chunk (or with ``finish``), resending in it, in order, the audio of every chunk that got no answer.
What the old sequence had heard since its last final is lost: its last partial is kept as a final,
and ``earshot_triton_audio_lost_seconds_total`` and a warning say how much audio it covered. A
sequence idle for ``keepalive_seconds`` gets an empty chunk so Triton's
``max_sequence_idle_microseconds`` never drops a stream that pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import grpc
import numpy as np
from prometheus_client import Counter, Histogram
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from earshot.engines import windowing
from earshot.engines.gathering import FrameGatherer
from earshot.engines.recognizers import EngineError, EngineOverloaded, Samples
from earshot.engines.sequencing import OVERLOADED_MARK
from earshot.engines.windowing import HandOver
from earshot.events import Recognition

_log = logging.getLogger(__name__)

ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
ROUND_TRIP = Histogram(
    "earshot_triton_round_trip_seconds",
    "From a chunk sent to Triton to its last response (all its recognitions) received.",
    ["model"],
    buckets=ROUND_TRIP_BUCKETS,
)
AUDIO_LOST = Counter(
    "earshot_triton_audio_lost_seconds_total",
    "Audio heard by Triton sequences that died with their connection before it was final.",
    ["model"],
)
RECONNECTS = Counter(
    "earshot_triton_reconnects_total", "gRPC streams to Triton opened after one broke.", ["model"]
)


@dataclass(frozen=True, slots=True)
class TritonModel:
    """A Triton model serving an engine, the audio rate it takes and when audio is sent to it.

    ``window``: when a stream's gathered audio is due at the model (None: send every chunk): when
    the model's next step can use it (Kyutai), or every 40 ms and when the next step can use it
    (Paraformer). The first chunk goes at once, which opens the sequence: see
    :mod:`earshot.engines.gathering`.
    """

    name: str
    sample_rate: int
    window: HandOver | None = None


MODELS = {
    "paraformer": TritonModel("paraformer_streaming", 16_000, windowing.PARAFORMER_THROUGH_TRITON),
    "kyutai": TritonModel("kyutai_stt", 24_000, windowing.KYUTAI),
}

_CHANNEL_OPTIONS = [
    # gRPC's default reconnect backoff grows to two minutes; a restarted Triton must be found fast.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
_EMPTY = np.zeros(0, dtype=np.float32)
_CLOSE_TIMEOUT_SECONDS = 5.0
#: How long ``accept`` waits for answers still out, as a share of the audio it was given: a real-time
#: caller's next chunk comes one chunk duration later, and must not be made late by the wait.
ANSWER_WAIT_SHARE = 0.5
#: The most requests of a stream left out when ``accept`` returns: beyond them it waits for the
#: oldest (so at most one more is out while it does: 200 ms of Paraformer's 40 ms requests, 400 ms
#: of Kyutai's 80 ms frames). Triton runs a sequence's requests one at a time, so a deeper pipeline
#: would only queue audio there; how far the bound holds a caller back is measured
#: (:attr:`TritonStream.held_behind_seconds`).
MAX_IN_FLIGHT = 4
# What writing to a call that broke or ended raises.
_CALL_ERRORS = (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError)


class _LinkBroken(Exception):
    """The gRPC stream a request was sent on broke before the request was answered."""


# What a request gets: its recognitions, Triton's error, or the news that its link broke.
_Answer = list[Recognition] | EngineError | _LinkBroken


@dataclass(eq=False, slots=True)
class _Pending:
    """A request sent and not fully answered: the responses so far, when it was sent."""

    future: asyncio.Future[_Answer]
    sent: float
    said: list[Recognition] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Audio:
    """Audio of a stream for one request, how many of the caller's chunks it carries, and the
    ``time.perf_counter()`` of the call that handed it over (the earliest, for audio merged)."""

    samples: Samples
    chunks: int
    heard: float


@dataclass(frozen=True, slots=True)
class _Request:
    """A request of a stream's sequence whose answer has not been returned to the caller yet."""

    request_id: str
    audio: _Audio
    future: asyncio.Future[_Answer]
    deadline: float


class TritonRecognizer:
    """A :class:`~earshot.engines.recognizers.Recognizer` whose streams are sequences on Triton.

    Create it inside the running event loop that uses it; call :meth:`aclose` to stop its tasks.
    """

    def __init__(
        self,
        url: str,
        *,
        engine: str = "paraformer",
        model: str | None = None,
        keepalive_seconds: float = 10.0,
        request_timeout_seconds: float = 30.0,
        reconnect_timeout_seconds: float = 30.0,
    ) -> None:
        """Start connecting (in the background: a Triton that is down is waited for).

        Args:
            url: ``host:port`` of Triton's gRPC endpoint.
            engine: ``paraformer`` or ``kyutai``; picks the model and the sample rate.
            model: serve from a model of another name (same contract) than the engine's.
            keepalive_seconds: send an empty chunk on a sequence idle this long; keep it well
                below the model's ``max_sequence_idle_microseconds``.
            request_timeout_seconds: how long a chunk may wait for its responses.
            reconnect_timeout_seconds: how long a chunk waits for a broken connection to come back
                before it fails with :class:`EngineError`.

        Raises:
            ValueError: an unknown engine.
        """
        if engine not in MODELS:
            raise ValueError(f"unknown engine {engine!r}; known: {', '.join(sorted(MODELS))}")
        self._engine = engine
        self._model = model or MODELS[engine].name
        for series in (ROUND_TRIP, AUDIO_LOST, RECONNECTS):
            # at 0 from the start: rate() misses the first observations of a series it never saw
            series.labels(self._model)
        self._url = url
        self._keepalive_seconds = keepalive_seconds
        self._request_timeout = request_timeout_seconds
        self._reconnect_timeout = reconnect_timeout_seconds
        self._ids = itertools.count(secrets.randbelow(2**62) + 1)
        self._requests = itertools.count()
        self._pending: dict[str, _Pending] = {}
        # Weak: a stream dropped without finish() stops getting keepalives.
        self._streams: weakref.WeakSet[TritonStream] = weakref.WeakSet()
        self._call: Any = None
        self._generation = 0
        self._connected = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._closed = False
        loop = asyncio.get_running_loop()
        self._link_task = loop.create_task(self._keep_connected(), name="triton-link")
        self._keepalive_task = loop.create_task(self._keep_alive(), name="triton-keepalive")

    @property
    def name(self) -> str:
        """The engine name (``paraformer``, ``kyutai``)."""
        return self._engine

    @property
    def sample_rate(self) -> int:
        """The rate of the engine's model."""
        return MODELS[self._engine].sample_rate

    @property
    def model(self) -> str:
        """The Triton model the streams go to."""
        return self._model

    @property
    def window(self) -> HandOver | None:
        """When the model's next step can use a stream's audio (None: every chunk is sent)."""
        return MODELS[self._engine].window

    def remote_backlog_seconds(self) -> float:
        """How far Triton is behind this process's streams; 0 when it keeps up.

        The larger of the age of the oldest request still unanswered and how far the back
        pressure (:data:`MAX_IN_FLIGHT`) has held a live stream's caller behind real time
        (:attr:`TritonStream.held_behind_seconds`): a Triton serving a share of real time keeps
        each stream's requests out for a bounded time, but holds its caller further behind with
        every chunk. A gateway refuses new streams by it (``earshot.gateways.lagging``).
        """
        # Requests are sent in order and leave when answered: the first left is the oldest.
        oldest = next(iter(self._pending.values()), None)
        waited = time.monotonic() - oldest.sent if oldest is not None else 0.0
        held = max((s.held_behind_seconds for s in list(self._streams)), default=0.0)
        return max(waited, held)

    def open_stream(self) -> TritonStream:
        """Start a stream; its sequence starts with its first chunk."""
        if self._closed:
            raise EngineError("the Triton recogniser is closed")
        stream = TritonStream(self)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Stop the connection and keepalive tasks; calls still waiting fail with EngineError.

        The gRPC stream is half-closed and Triton ends it once it has answered what it holds: a
        cancelled call leaves grpc.aio waiting for its status in a task of its own.
        """
        self._closed = True
        self._keepalive_task.cancel()
        if self._call is not None:
            with contextlib.suppress(*_CALL_ERRORS):
                await self._call.done_writing()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._link_task), _CLOSE_TIMEOUT_SECONDS)
        self._link_task.cancel()
        await asyncio.gather(self._link_task, self._keepalive_task, return_exceptions=True)
        self._fail_pending(EngineError("the Triton recogniser was closed"))
        self._connected.set()  # wakes chunks waiting for a connection: they see it closed

    def _forget(self, stream: TritonStream) -> None:
        self._streams.discard(stream)

    def _next_sequence_id(self) -> int:
        return next(self._ids) % 2**63 or 1

    async def _keep_connected(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                opened = await self._serve_one_link()
            except Exception:  # a bug must not leave the recogniser without a connection for good
                _log.exception("the gRPC stream to Triton at %s failed", self._url)
                opened = False
            backoff = 0.1 if opened else min(backoff * 2, 1.0)
            await asyncio.sleep(backoff)

    async def _serve_one_link(self) -> bool:
        """Connect, open the stream and route its responses until it ends; True if it opened."""
        channel = grpc.aio.insecure_channel(self._url, options=_CHANNEL_OPTIONS)
        opened = False
        call: Any = None
        try:
            await channel.channel_ready()
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            self._call = call
            self._generation += 1
            if self._generation > 1:
                RECONNECTS.labels(self._model).inc()
                _log.info("reconnected to Triton at %s", self._url)
            opened = True
            self._connected.set()
            while (response := await call.read()) is not grpc.aio.EOF:
                self._route(response)
            if not self._closed:
                _log.warning("Triton at %s ended the gRPC stream", self._url)
        except grpc.aio.AioRpcError as exc:
            _log.warning("gRPC stream to Triton at %s broke: %s", self._url, exc.details())
        finally:
            self._connected.clear()
            self._call = None
            self._fail_pending(_LinkBroken())
            await channel.close(grace=None)
        return opened

    def _fail_pending(self, error: EngineError | _LinkBroken) -> None:
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if not request.future.done():
                request.future.set_result(error)

    def _route(self, response: Any) -> None:
        infer = response.infer_response
        pending = self._pending.get(infer.id)
        if pending is None or pending.future.done():
            return  # the answer to a request that timed out
        if response.error_message:
            del self._pending[infer.id]
            pending.future.set_result(_error(response.error_message))
            return
        if len(infer.outputs):
            pending.said.append(_recognition(infer))
        final = infer.parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            del self._pending[infer.id]
            ROUND_TRIP.labels(self._model).observe(time.monotonic() - pending.sent)
            pending.future.set_result(pending.said)

    async def _generation_when_connected(self, deadline: float) -> int:
        try:
            await asyncio.wait_for(self._connected.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise EngineError(
                f"Triton at {self._url} was unreachable for {self._reconnect_timeout:g} s"
            ) from None
        if self._closed:
            raise EngineError("the Triton recogniser is closed")
        return self._generation

    async def _send_request(
        self, sequence_id: int, samples: Samples, *, start: bool, end: bool
    ) -> tuple[str, asyncio.Future[_Answer]]:
        """Send one chunk of a sequence; the future gets its answer (a broken link included)."""
        request_id = f"{sequence_id:x}-{next(self._requests)}"
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, time.monotonic())
        request = _request(self._model, request_id, sequence_id, samples, start=start, end=end)
        try:
            await self._write(request)
        except _LinkBroken as exc:
            self._pending.pop(request_id, None)
            if not future.done():
                future.set_result(exc)
        except BaseException:  # cancelled mid-write: nobody will wait for its answer
            self._pending.pop(request_id, None)
            raise
        return request_id, future

    def _abandon(self, request_id: str) -> None:
        """Stop routing the answer of a request nobody waits for any more."""
        self._pending.pop(request_id, None)

    async def _release(self, sequence_id: int) -> None:
        """End a sequence whose START the model refused.

        Triton's sequence batcher took the START and holds the sequence (one of its
        ``max_candidate_sequences``) until END or the idle timeout; without this END, refused
        retries would fill its candidates and later STARTs would wait in its backlog instead of
        being refused at once. The model answers an END for a sequence it does not hold with an
        error, which is expected here.
        """
        request_id, future = await self._send_request(sequence_id, _EMPTY, start=False, end=True)
        try:
            await asyncio.wait_for(future, self._request_timeout)
        except TimeoutError:
            _log.warning("Triton did not answer the END of refused sequence %d", sequence_id)
        finally:
            self._pending.pop(request_id, None)

    async def _write(self, request: Any) -> None:
        async with self._write_lock:
            call = self._call
            if call is None:
                raise _LinkBroken()
            try:
                await call.write(request)
            except _CALL_ERRORS as exc:
                raise _LinkBroken() from exc

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_seconds / 4)
            due = time.monotonic() - self._keepalive_seconds
            idle = [s for s in self._streams if s._idle_since(due)]
            await asyncio.gather(*(s._keep_alive() for s in idle))


class TritonStream:
    """One audio stream: a Triton sequence (a new one after a lost connection).

    Its requests are pipelined and their answers returned in order: see the module docstring.
    """

    def __init__(self, owner: TritonRecognizer) -> None:
        """Belong to a recogniser; nothing is sent before the first chunk."""
        self._owner = owner
        self._sequence_id: int | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._last_sent = time.monotonic()
        # What the next call returns, in order: answers, and the partial of a lost sequence.
        self._held: list[Recognition] = []
        self._in_flight: deque[_Request] = deque()
        # Audio for the next request: what a lost sequence left unanswered, to resend.
        self._unsent: list[_Audio] = []
        self._partial = ""
        self._partial_heard: float | None = None
        self._unfinal_samples = 0
        # Audio gathered until it completes one of the model's frames.
        self._gathered = FrameGatherer(owner.window)
        self._error: EngineError | None = None
        self._finished = False
        self._sent_chunks = 0
        self._answered_chunks = 0
        # How far the calls of accept have taken longer than the audio they carried, at the end of
        # the last call (a caller that sends nothing is held by nobody: it decays from then on).
        self._held_behind = 0.0
        self._held_at = time.perf_counter()
        self._listener: Callable[[], None] | None = None

    @property
    def sent_chunks(self) -> int:
        """How many calls of :meth:`accept` and :meth:`finish` sent audio (or the END) to Triton."""
        return self._sent_chunks

    @property
    def answered_chunks(self) -> int:
        """How many of :attr:`sent_chunks` have had their answers returned by a call.

        Chunks are answered in order: the ``i``-th chunk sent (from 0) once this exceeds ``i``.
        A chunk refused for overload counts as answered (its call raised).
        """
        return self._answered_chunks

    @property
    def held_behind_seconds(self) -> float:
        """How far :meth:`accept` calls have held a real-time caller behind the audio it gave.

        Each call but one that starts a sequence (its START waits for the answer: a stream's first
        call, or its first after a lost link) adds what it took beyond its chunk's duration and
        takes off what it took less, never going below 0: a Triton that keeps up leaves it at 0,
        one serving half of real time adds a second per second of audio. Between calls it decays
        with the time since the last one returned (a caller that pauses is not held); a finished
        stream is 0.
        """
        if self._finished:
            return 0.0
        return max(0.0, self._held_behind - (time.perf_counter() - self._held_at))

    async def accept(self, samples: Samples) -> list[Recognition]:
        """Send a chunk; return the answers complete by then, in order (see the module docstring).

        Raises:
            EngineOverloaded: the model had no room for a new sequence; the next chunk tries again.
            EngineError: Triton rejected a chunk, did not answer one in time, or stayed unreachable.
        """
        heard = time.perf_counter()
        if self._finished:
            raise EngineError("audio arrived after the stream was finished")
        async with self._lock:
            if self._error is not None:
                raise self._error
            self._collect()
            # The first chunk goes at once: its START is refused at once when the model is full.
            sequence = self._sequence_id
            if self._gathered.add(samples) or sequence is None:
                await self._hand_over(self._gathered.take(), heard, end=False)
            duration = len(samples) / self._owner.sample_rate
            await self._wait(ANSWER_WAIT_SHARE * duration)
            await self._bound_in_flight()
            # A START (a stream's first, or after a lost link) waits for its answer by design, not
            # by back pressure.
            if sequence is not None and self._sequence_id == sequence:
                held_before = max(0.0, self._held_behind - (heard - self._held_at))
                self._held_at = time.perf_counter()
                self._held_behind = max(0.0, held_before + (self._held_at - heard) - duration)
            return self._take_held()

    @property
    def unanswered(self) -> bool:
        """Whether chunks sent have answers (or a lost sequence's last partial) not returned yet."""
        return bool(self._in_flight or self._held or self._unsent)

    @property
    def ready(self) -> bool:
        """Whether :meth:`collect` would return an answer now (a recognition, or Triton's error).

        The answers of a broken link are not: the next chunk (or the quiet caller's collect) sends
        them again on a new sequence.
        """
        if self._held:
            return True
        if not self._in_flight or not (future := self._in_flight[0].future).done():
            return False
        return not future.cancelled() and not isinstance(future.result(), _LinkBroken)

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener`` (on the event loop, no argument) when the oldest chunk's answer comes
        while no call of the stream runs, so the caller can :meth:`collect` it then instead of with
        its next call; None: stop. See the module docstring."""
        self._listener = listener

    def _answered(self, future: asyncio.Future[_Answer]) -> None:
        """A request's answer came: tell the listener if it is the next one to return."""
        if self._in_flight and self._in_flight[0].future is future:
            self._tell()

    def _tell(self) -> None:
        """Tell the listener if an answer is ready and no call runs (a call returns it itself)."""
        listener = self._listener
        if listener is not None and not self._lock.locked() and not self._finished and self.ready:
            listener()

    async def collect(self) -> list[Recognition]:
        """Return the answers complete now, in order, sending nothing new.

        What a lost sequence left unanswered is resent on a new one, as the next chunk would.

        Raises:
            EngineError: Triton answered a chunk with an error, or not within the request timeout,
                or stayed unreachable.
        """
        if self._finished:
            return []
        async with self._lock:
            if self._error is not None:
                raise self._error
            if not self._collect() or self._unsent:
                # The link broke: resend on a new sequence (no audio of the caller's own).
                await self._hand_over(_EMPTY, time.perf_counter(), end=False, chunks=0)
            return self._take_held()

    async def finish(self, tail: Samples | None = None) -> list[Recognition]:
        """End the sequence and return its last recognitions (a final when text was pending).

        ``tail`` is sent first; when it cannot be (Triton overloaded or failing) it is dropped with
        a log line and the sequence still ends, so the text recognised so far is finalised. Every
        answer still out is waited for.
        """
        said_tail: list[Recognition] = []
        if tail is not None and tail.size and not self._finished:
            try:
                said_tail = await self.accept(tail)
            except EngineError as exc:
                _log.warning(
                    "the last %d samples of a stream were not recognised: %s", tail.size, exc
                )
        return said_tail + await self._end()

    async def _end(self) -> list[Recognition]:
        heard = time.perf_counter()
        async with self._lock:
            self._finished = True
            try:
                if self._error is None and (self._sequence_id is not None or self._unsent):
                    await self._end_sequence(heard)
                if self._sequence_id is None or self._error is not None:
                    return self._take_held() + self._salvage()
                return self._take_held()
            finally:
                self._abandon()
                self._owner._forget(self)

    async def _end_sequence(self, heard: float) -> None:
        try:
            await self._hand_over(self._gathered.take(), heard, end=True)
            while not await self._drain():
                # The link broke before every answer came: what got none ends a new sequence.
                await self._hand_over(_EMPTY, heard, end=True, chunks=0)
        except EngineOverloaded as exc:
            _log.warning("the end of a stream was not recognised: %s", exc)

    def _take_held(self) -> list[Recognition]:
        held, self._held = self._held, []
        return held

    async def _hand_over(
        self, samples: Samples, heard: float, *, end: bool, chunks: int = 1
    ) -> None:
        """Send audio on the stream's sequence, or start one (after a lost one, resending)."""
        owner = self._owner
        deadline = time.monotonic() + owner._reconnect_timeout
        self._sent_chunks += chunks
        self._unsent.append(_Audio(samples, chunks, heard))
        while True:
            generation = await owner._generation_when_connected(deadline)
            if self._sequence_id is not None and self._generation != generation:
                self._lose_sequence()
            audio = self._take_unsent()
            if self._sequence_id is not None:
                request = await self._send(audio, start=False, end=end)
            elif end and not audio.samples.size:
                # The lost sequence was the whole stream: nothing is left to end.
                self._answered_chunks += audio.chunks
                return
            else:
                request = await self._start(audio, generation, end=end)
            if not (request.future.done() and isinstance(request.future.result(), _LinkBroken)):
                return

    async def _start(self, audio: _Audio, generation: int, *, end: bool) -> _Request:
        """Start a sequence with ``audio`` and wait for its answer (a refusal comes at once)."""
        owner = self._owner
        self._sequence_id, self._generation = owner._next_sequence_id(), generation
        self._gathered.restart(len(audio.samples))
        request = await self._send(audio, start=True, end=end)
        await asyncio.wait([request.future], timeout=max(0.0, request.deadline - time.monotonic()))
        answer = request.future.result() if request.future.done() else None
        if isinstance(answer, EngineOverloaded):
            # The model made no sequence: the next chunk tries to START again.
            self._in_flight.clear()
            self._answered_chunks += audio.chunks
            await owner._release(self._sequence_id)
            self._sequence_id = None
            raise answer
        if not isinstance(answer, _LinkBroken):
            self._collect()  # its answer, or its error, or its timeout
        return request

    async def _send(self, audio: _Audio, *, start: bool, end: bool) -> _Request:
        owner = self._owner
        assert self._sequence_id is not None
        self._last_sent = time.monotonic()
        request_id, future = await owner._send_request(
            self._sequence_id, audio.samples, start=start, end=end
        )
        future.add_done_callback(self._answered)
        request = _Request(request_id, audio, future, self._last_sent + owner._request_timeout)
        self._in_flight.append(request)
        return request

    async def _wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the answers out, then collect those complete."""
        waiting = [request for request in self._in_flight if not request.future.done()]
        if waiting and seconds > 0:
            timeout = min(seconds, waiting[0].deadline - time.monotonic())
            await asyncio.wait([r.future for r in waiting], timeout=max(0.0, timeout))
        self._collect()

    async def _bound_in_flight(self) -> None:
        """Back pressure: with over :data:`MAX_IN_FLIGHT` requests out, wait for the oldest ones.

        A Triton that falls behind then holds up the caller, whose lag shows it (a gateway refuses
        new streams by it), instead of a queue growing until requests time out.
        """
        while len(self._in_flight) > MAX_IN_FLIGHT:
            oldest = self._in_flight[0]
            if not oldest.future.done():
                timeout = max(0.0, oldest.deadline - time.monotonic())
                await asyncio.wait([oldest.future], timeout=timeout)
            if not self._collect():
                return  # the link broke: the next hand-over resends what went unanswered

    async def _drain(self) -> bool:
        """Wait for every answer out (each until its deadline); False when the link broke first."""
        while self._in_flight:
            waiting = [request for request in self._in_flight if not request.future.done()]
            if waiting:
                timeout = max(0.0, waiting[0].deadline - time.monotonic())
                await asyncio.wait([r.future for r in waiting], timeout=timeout)
            if not self._collect():
                return False
        return True

    def _collect(self) -> bool:
        """Hold the answers complete so far, in order; False when the next one's link broke.

        Raises:
            EngineError: Triton answered a chunk with an error, or not within the request timeout.
        """
        now = time.monotonic()
        while self._in_flight:
            request = self._in_flight[0]
            if not request.future.done():
                if now >= request.deadline:
                    self._fail(
                        EngineError(
                            f"Triton did not answer a chunk of sequence {self._sequence_id} of "
                            f"model {self._owner.model} within {self._owner._request_timeout:g} s"
                        )
                    )
                return True
            answer = request.future.result()
            if isinstance(answer, _LinkBroken):
                return False
            if isinstance(answer, EngineError):
                self._fail(answer)
            self._in_flight.popleft()
            said = [replace(recognition, heard=request.audio.heard) for recognition in answer]
            self._note(request.audio.samples, said)
            self._held.extend(said)
            self._answered_chunks += request.audio.chunks
        return True

    def _fail(self, error: EngineError) -> NoReturn:
        self._error = error
        self._abandon()
        raise error

    def _abandon(self) -> None:
        for request in self._in_flight:
            self._owner._abandon(request.request_id)
            request.future.cancel()
        self._in_flight.clear()

    def _take_unsent(self) -> _Audio:
        unsent, self._unsent = self._unsent, []
        if len(unsent) == 1:
            return unsent[0]
        samples = np.concatenate([audio.samples for audio in unsent]) if unsent else _EMPTY
        heard = min((audio.heard for audio in unsent), default=time.perf_counter())
        return _Audio(samples, sum(audio.chunks for audio in unsent), heard)

    def _note(self, samples: Samples, said: list[Recognition]) -> None:
        self._unfinal_samples += len(samples)
        for recognition in said:
            if recognition.is_final:
                self._partial, self._unfinal_samples = "", 0
            else:
                self._partial, self._partial_heard = recognition.text, recognition.heard

    def _lose_sequence(self) -> None:
        """The sequence died with its connection: what it left unanswered is sent again."""
        self._collect()  # what it answered before, in order
        lost = [request.audio for request in self._in_flight]
        self._abandon()
        self._unsent[:0] = lost
        self._restart_after_loss()
        self._sequence_id = None

    def _restart_after_loss(self) -> None:
        """Account for a sequence that died with its connection; keep its last partial as a final.

        The final waits in ``_held`` until a call returns it, also when the resend then fails.
        """
        lost = self._unfinal_samples / self._owner.sample_rate
        if lost or self._partial:
            AUDIO_LOST.labels(self._owner.model).inc(lost)
            _log.warning(
                "Triton sequence %d of model %s died with its connection: %.2f s of audio not yet "
                "final were lost (its last partial is kept as a final); going on with a new one",
                self._sequence_id, self._owner.model, lost,
            )  # fmt: skip
        self._held.extend(self._salvage())

    def _salvage(self) -> list[Recognition]:
        partial, self._partial, self._unfinal_samples = self._partial, "", 0
        return [Recognition(partial, is_final=True, heard=self._partial_heard)] if partial else []

    def _on_link(self) -> bool:
        # A sequence of a broken connection is left to the next chunk, which restarts it.
        return (
            self._sequence_id is not None
            and self._error is None
            and not self._finished
            and self._generation == self._owner._generation
            and self._owner._connected.is_set()
        )

    def _idle_since(self, moment: float) -> bool:
        return self._on_link() and not self._lock.locked() and self._last_sent <= moment

    async def _keep_alive(self) -> None:
        if self._lock.locked():
            return
        async with self._lock:
            # An empty chunk resets Triton's idle timer; what it says is returned as any answer.
            if self._on_link():
                await self._send(_Audio(_EMPTY, 0, time.perf_counter()), start=False, end=False)
        self._tell()  # an answer may have come while the keepalive was being sent


def _request(
    model: str, request_id: str, sequence_id: int, samples: Samples, *, start: bool, end: bool
) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    audio = request.inputs.add()
    audio.name, audio.datatype = "AUDIO", "FP32"
    audio.shape.extend([1, len(samples)])
    request.raw_input_contents.append(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    # Triton takes the sequence id as int64 (and hands it to the model as CORRID, UINT64).
    request.parameters["sequence_id"].int64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def _error(message: str) -> EngineError:
    if OVERLOADED_MARK in message:
        return EngineOverloaded(f"Triton: {message}")
    return EngineError(f"Triton: {message}")


def _recognition(infer_response: Any) -> Recognition:
    result = InferResult(infer_response)
    text = result.as_numpy("TEXT").reshape(-1)[0]
    is_final = bool(result.as_numpy("IS_FINAL").reshape(-1)[0])
    return Recognition(
        text=text.decode() if isinstance(text, bytes) else str(text), is_final=is_final
    )
