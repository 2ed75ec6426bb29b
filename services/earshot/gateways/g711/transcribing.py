"""One session's stream: encoded audio in, numbered and stored partials and finals out.

A :class:`Transcription` knows nothing of WebSockets: it returns the messages a client should see and
the gateway decides whether to send them (RETURN_TRANSCRIPTION=false sends nothing). Results go
through the journal (:mod:`earshot.persistence.journaling`): a final is durable in the spool (and,
with the embedded persister, stored) before its message is returned.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram

from earshot import metrics
from earshot.audio import codecs
from earshot.audio.framing import duration_seconds
from earshot.audio.holding import HeldAudio
from earshot.audio.resampling import StreamResampler
from earshot.engines.recognizers import (
    EngineOverloaded,
    HoldingStream,
    PipelinedStream,
    Recognizer,
    RecognizerStream,
)
from earshot.events import Partial, Recognition, Segment, SessionId
from earshot.gateways.arrivals import ChunkArrivals
from earshot.gateways.g711 import messages
from earshot.persistence.journaling import Journal
from earshot.storage.ports import PartialStore, SegmentStore

GATEWAY = "g711"


class SpoolFull(Exception):
    """The spool is over its bound: the chunk was not taken (finals of earlier audio still are)."""


@dataclass(frozen=True, slots=True)
class Stores:
    """Where a transcription keeps its results: the journal writes, the stores are read."""

    partials: PartialStore
    segments: SegmentStore
    journal: Journal


@dataclass(frozen=True, slots=True)
class Meters:
    """A stream's metric children, looked up once per stream rather than once per frame."""

    frames: Counter
    audio_bytes: Counter
    audio_seconds: Counter
    chunk_latency: Histogram
    reply_latency: Histogram
    real_time_factor: Histogram
    first_partial_latency: Histogram
    final_latency: Histogram
    segments: Counter
    decode_seconds: Counter
    without_text: Counter
    partials: Counter
    finals_at_end: Counter

    @classmethod
    def for_engine(cls, engine: str) -> Meters:
        """The children of the gateway's metrics for ``engine``."""
        return cls(
            frames=metrics.FRAMES_RECEIVED.labels(GATEWAY),
            audio_bytes=metrics.AUDIO_BYTES_RECEIVED.labels(GATEWAY),
            audio_seconds=metrics.AUDIO_SECONDS_RECEIVED.labels(GATEWAY),
            chunk_latency=metrics.CHUNK_LATENCY.labels(GATEWAY, engine),
            reply_latency=metrics.REPLY_LATENCY.labels(GATEWAY, engine),
            real_time_factor=metrics.REAL_TIME_FACTOR.labels(GATEWAY, engine),
            first_partial_latency=metrics.FIRST_PARTIAL_LATENCY.labels(GATEWAY, engine),
            final_latency=metrics.FINAL_LATENCY.labels(GATEWAY, engine),
            segments=metrics.SEGMENTS_FINALISED.labels(GATEWAY, engine),
            decode_seconds=metrics.AUDIO_DECODE_SECONDS.labels(GATEWAY),
            without_text=metrics.CHUNKS_WITHOUT_TEXT.labels(GATEWAY, engine),
            partials=metrics.PARTIALS.labels(GATEWAY, engine),
            finals_at_end=metrics.FINALS_AT_STREAM_END.labels(GATEWAY, engine),
        )


@dataclass(slots=True)
class _Timing:
    """Arrival times that the latency metrics are measured from."""

    segment_started: float | None = None
    first_partial_sent: bool = False


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """A chunk a pipelined recogniser sent and has not answered yet."""

    index: int
    arrived: float
    audio_seconds: float


@dataclass(slots=True)
class Transcription:
    """Decode, resample, recognise, number and store one session's audio."""

    session_id: SessionId
    codec: codecs.Codec
    source_rate: int
    stream: RecognizerStream
    #: the chunks the recogniser cannot use yet, encoded (decoded and resampled once it can)
    audio: HeldAudio
    stores: Stores
    engine: str
    next_seq: int
    meters: Meters
    #: When the chunk behind the messages the last call returned arrived (the earliest of them).
    replied_for: float | None = None
    _timing: _Timing = field(default_factory=_Timing)
    _arrivals: ChunkArrivals = field(default_factory=ChunkArrivals)
    _unanswered: deque[_Unanswered] = field(default_factory=deque)
    #: the stream, when it answers chunks with later calls (decided once, not per chunk)
    _pipelined: PipelinedStream | None = field(init=False, default=None)
    #: the stream, when it says how much audio its next step wants (decided once, not per chunk)
    _holding: HoldingStream | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.stream, PipelinedStream):
            self._pipelined = self.stream
        if isinstance(self.stream, HoldingStream):
            self._holding = self.stream

    @classmethod
    async def open(
        cls,
        session_id: SessionId,
        recognizer: Recognizer,
        *,
        codec: codecs.Codec,
        source_rate: int,
        stores: Stores,
        user_id: str | None = None,
        language: str | None = None,
    ) -> Transcription:
        """Start (or resume) a session: numbering continues after its highest final (spooled or
        stored).

        Raises:
            StorageError: a store cannot be read to continue the numbering.
        """
        next_seq = await stores.journal.open_session(session_id, user_id, language)
        metrics.STREAMS_OPENED.labels(GATEWAY).inc()
        return cls(
            session_id=session_id,
            codec=codec,
            source_rate=source_rate,
            stream=recognizer.open_stream(),
            audio=HeldAudio(codec, StreamResampler(source_rate, recognizer.sample_rate)),
            stores=stores,
            engine=recognizer.name,
            next_seq=next_seq,
            meters=Meters.for_engine(recognizer.name),
        )

    async def feed(
        self, chunk: bytes, arrived: float | None = None
    ) -> list[messages.ServerMessage]:
        """Recognise one encoded chunk that arrived at ``arrived`` (``time.perf_counter()``; None:
        now).

        A recogniser may answer the chunk with a later call (Triton pipelines its requests): each
        message's latency is measured from the chunk behind it, see :attr:`replied_for`. A chunk
        that cannot complete the recogniser's next step is held, encoded, and answers nothing.

        Raises:
            codecs.InvalidAudio: the chunk cannot be decoded (nothing is lost so far).
            EngineOverloaded: the chunk was not taken; the stream can still be finished.
            SpoolFull: the chunk was not taken; the stream can still be finished.
        """
        if self.stores.journal.full:
            raise SpoolFull
        if arrived is None:
            arrived = time.perf_counter()
        decoding = time.perf_counter()
        wanted = self._holding.wanted_samples if self._holding is not None else 0
        released = self.audio.add(chunk, wanted)
        self.meters.decode_seconds.inc(time.perf_counter() - decoding)
        if self._timing.segment_started is None:
            self._timing.segment_started = arrived
        self._arrivals.hand(arrived)
        audio_seconds = duration_seconds(len(chunk), self.codec, self.source_rate)
        if released is None:
            self._observe_chunk(arrived, audio_seconds)
            self.meters.without_text.inc()
            return []
        pipelined = self._pipelined
        sent_before = pipelined.sent_chunks if pipelined is not None else 0
        try:
            recognitions = await self.stream.accept(released.samples)
        except EngineOverloaded:
            # This chunk was not taken: give back what the resampler returned before it (as when
            # every chunk was resampled on arrival), so the end of the stream still hands it over.
            self.audio.restore(released.samples[: released.earlier])
            raise
        if pipelined is not None and pipelined.sent_chunks > sent_before:
            self._unanswered.append(_Unanswered(sent_before, arrived, audio_seconds))
        else:
            self._observe_chunk(arrived, audio_seconds)
        self._observe_answered()
        if not any(r.text for r in recognitions):
            self.meters.without_text.inc()
        return await self._publish(recognitions, arrived)

    @property
    def unanswered(self) -> bool:
        """Whether the recogniser holds answers to chunks already fed (see :meth:`collect`)."""
        return self._pipelined is not None and self._pipelined.unanswered

    @property
    def ready(self) -> bool:
        """Whether the recogniser holds an answer :meth:`collect` would return now."""
        return self._pipelined is not None and self._pipelined.ready

    def on_answer(self, listener: Callable[[], None] | None) -> None:
        """Have ``listener`` called when an answer comes between calls (see
        :meth:`~earshot.engines.recognizers.PipelinedStream.on_answer`); None: stop."""
        if self._pipelined is not None:
            self._pipelined.on_answer(listener)

    async def collect(self) -> list[messages.ServerMessage]:
        """The messages of answers that came since the last call, while no audio arrived.

        A pipelined recogniser returns a chunk's answer with a later call: when it says the answer
        came, when the client pauses, or when the client has sent its last chunk and waits for its
        last final, this is that call.

        Raises:
            EngineError: the recogniser failed (what it said before is stored).
            SpoolError: the spool cannot be written.
        """
        if self._pipelined is None:
            return []
        recognitions = await self._pipelined.collect()
        self._observe_answered()
        return await self._publish(recognitions, time.perf_counter())

    async def finish(self) -> list[messages.ServerMessage]:
        """End the stream: recognise the audio still held and finalise the pending partial.

        It never waits for room in the inference queue (the resampler's tail goes with the end of
        the stream), so a stream refused for overload or closed while the queue is full still
        stores its pending text.

        Raises:
            EngineError: the recogniser failed (what it said before is stored).
            SpoolError: the spool cannot be written.
        """
        arrived = time.perf_counter()
        tail = self.audio.flush()
        self._arrivals.hand(arrived)
        recognitions: list[Recognition] = await self.stream.finish(tail)
        self._observe_answered()
        said = await self._publish(recognitions, arrived)
        finals = sum(message["type"] == "final" for message in said)
        self.meters.finals_at_end.inc(finals)
        return said

    async def _publish(
        self, recognitions: list[Recognition], arrived: float
    ) -> list[messages.ServerMessage]:
        out: list[messages.ServerMessage] = []
        self.replied_for = None
        for recognition in recognitions:
            cause = self._arrivals.of(recognition, arrived)
            if not recognition.text:
                continue
            if self.replied_for is None:
                self.replied_for = cause
            if recognition.is_final:
                out.append(await self._store_final(recognition.text, cause))
            else:
                out.append(await self._store_partial(recognition.text))
        return out

    async def _store_partial(self, text: str) -> messages.PartialMessage:
        partial = Partial(self.session_id, self.next_seq, text, datetime.now(UTC))
        self.stores.journal.partial(partial)
        self.meters.partials.inc()
        if not self._timing.first_partial_sent and self._timing.segment_started is not None:
            self._timing.first_partial_sent = True
            self.meters.first_partial_latency.observe(
                time.perf_counter() - self._timing.segment_started
            )
        return messages.partial(text, self.next_seq)

    async def _store_final(self, text: str, arrived: float) -> messages.FinalMessage:
        seq = self.next_seq
        segment = Segment(self.session_id, seq, text, datetime.now(UTC))
        await self.stores.journal.final(segment)
        self.next_seq = seq + 1
        # The next segment starts with the chunk after this one, maybe already handed over.
        self._timing = _Timing(segment_started=self._arrivals.after_answered())
        self.meters.final_latency.observe(time.perf_counter() - arrived)
        self.meters.segments.inc()
        return messages.final(text, seq)

    def _observe_answered(self) -> None:
        """Time the chunks a pipelined recogniser has answered by now (with this call or before)."""
        if not self._unanswered or self._pipelined is None:
            return
        answered = self._pipelined.answered_chunks
        while self._unanswered and self._unanswered[0].index < answered:
            chunk = self._unanswered.popleft()
            self._observe_chunk(chunk.arrived, chunk.audio_seconds)

    def _observe_chunk(self, arrived: float, audio_seconds: float) -> None:
        elapsed = time.perf_counter() - arrived
        self.meters.chunk_latency.observe(elapsed)
        if audio_seconds > 0:
            self.meters.real_time_factor.observe(elapsed / audio_seconds)
