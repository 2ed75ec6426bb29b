"""One session's stream: encoded audio in, numbered and stored partials and finals out.

A :class:`Transcription` knows nothing of WebSockets: it returns the messages a client should see and
the gateway decides whether to send them (RETURN_TRANSCRIPTION=false sends nothing). Results go
through the journal (:mod:`earshot.persistence.journaling`): a final is durable in the spool (and,
with the embedded persister, stored) before its message is returned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from earshot import metrics
from earshot.audio import codecs
from earshot.audio.framing import duration_seconds
from earshot.audio.resampling import Samples, StreamResampler
from earshot.engines.recognizers import Recognizer, RecognizerStream
from earshot.events import Partial, Recognition, Segment, SessionId
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


@dataclass(slots=True)
class _Timing:
    """Arrival times that the latency metrics are measured from."""

    segment_started: float | None = None
    first_partial_sent: bool = False


@dataclass(slots=True)
class Transcription:
    """Decode, resample, recognise, number and store one session's audio."""

    session_id: SessionId
    codec: codecs.Codec
    source_rate: int
    stream: RecognizerStream
    resampler: StreamResampler
    stores: Stores
    engine: str
    next_seq: int
    _timing: _Timing = field(default_factory=_Timing)

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
    ) -> Transcription:
        """Start (or resume) a session: numbering continues after its highest final (spooled or
        stored).

        Raises:
            StorageError: a store cannot be read to continue the numbering.
        """
        next_seq = await stores.journal.open_session(session_id, user_id)
        metrics.STREAMS_OPENED.labels(GATEWAY).inc()
        return cls(
            session_id=session_id,
            codec=codec,
            source_rate=source_rate,
            stream=recognizer.open_stream(),
            resampler=StreamResampler(source_rate, recognizer.sample_rate),
            stores=stores,
            engine=recognizer.name,
            next_seq=next_seq,
        )

    async def feed(self, chunk: bytes) -> list[messages.ServerMessage]:
        """Recognise one encoded chunk.

        Raises:
            codecs.InvalidAudio: the chunk cannot be decoded (nothing is lost so far).
            EngineOverloaded: the chunk was not taken; the stream can still be finished.
            SpoolFull: the chunk was not taken; the stream can still be finished.
        """
        if self.stores.journal.full:
            raise SpoolFull
        arrived = time.perf_counter()
        samples = self.resampler.process(codecs.decode(chunk, self.codec))
        metrics.AUDIO_DECODE_SECONDS.labels(GATEWAY).inc(time.perf_counter() - arrived)
        if self._timing.segment_started is None:
            self._timing.segment_started = arrived
        recognitions = await self.stream.accept(samples)
        self._observe_chunk(arrived, duration_seconds(len(chunk), self.codec, self.source_rate))
        if not any(r.text for r in recognitions):
            metrics.CHUNKS_WITHOUT_TEXT.labels(GATEWAY, self.engine).inc()
        return await self._publish(recognitions, arrived)

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
        tail: Samples = self.resampler.flush()
        recognitions: list[Recognition] = await self.stream.finish(tail)
        said = await self._publish(recognitions, arrived)
        finals = sum(message["type"] == "final" for message in said)
        metrics.FINALS_AT_STREAM_END.labels(GATEWAY, self.engine).inc(finals)
        return said

    async def _publish(
        self, recognitions: list[Recognition], arrived: float
    ) -> list[messages.ServerMessage]:
        out: list[messages.ServerMessage] = []
        for recognition in recognitions:
            if not recognition.text:
                continue
            if recognition.is_final:
                out.append(await self._store_final(recognition.text, arrived))
            else:
                out.append(await self._store_partial(recognition.text, arrived))
        return out

    async def _store_partial(self, text: str, arrived: float) -> messages.PartialMessage:
        partial = Partial(self.session_id, self.next_seq, text, datetime.now(UTC))
        self.stores.journal.partial(partial)
        metrics.PARTIALS.labels(GATEWAY, self.engine).inc()
        if not self._timing.first_partial_sent and self._timing.segment_started is not None:
            self._timing.first_partial_sent = True
            metrics.FIRST_PARTIAL_LATENCY.labels(GATEWAY, self.engine).observe(
                time.perf_counter() - self._timing.segment_started
            )
        return messages.partial(text, self.next_seq)

    async def _store_final(self, text: str, arrived: float) -> messages.FinalMessage:
        seq = self.next_seq
        segment = Segment(self.session_id, seq, text, datetime.now(UTC))
        await self.stores.journal.final(segment)
        self.next_seq = seq + 1
        self._timing = _Timing()
        metrics.FINAL_LATENCY.labels(GATEWAY, self.engine).observe(time.perf_counter() - arrived)
        metrics.SEGMENTS_FINALISED.labels(GATEWAY, self.engine).inc()
        return messages.final(text, seq)

    def _observe_chunk(self, arrived: float, audio_seconds: float) -> None:
        elapsed = time.perf_counter() - arrived
        metrics.CHUNK_LATENCY.labels(GATEWAY, self.engine).observe(elapsed)
        if audio_seconds > 0:
            metrics.REAL_TIME_FACTOR.labels(GATEWAY, self.engine).observe(elapsed / audio_seconds)
