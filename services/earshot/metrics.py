"""Prometheus metrics of the data plane (names start with ``earshot_``).

Latency histograms share one bucket ladder from 50 ms to 10 s (DESIGN.md, Metrics), with finer steps
below 50 ms for the per-chunk processing delay, whose target is tens of milliseconds.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
CHUNK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, *LATENCY_BUCKETS)
RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

FIRST_PARTIAL_LATENCY = Histogram(
    "earshot_first_partial_latency_seconds",
    "From the first audio chunk of a segment arriving to that segment's first partial.",
    ["gateway", "engine"],
    buckets=LATENCY_BUCKETS,
)
FINAL_LATENCY = Histogram(
    "earshot_final_latency_seconds",
    "From the chunk that ended a segment (or the stream) arriving to its final being stored and sent "
    "(the chunk whose answer held the final, also when a pipelined recogniser returned it later).",
    ["gateway", "engine"],
    buckets=LATENCY_BUCKETS,
)
CHUNK_LATENCY = Histogram(
    "earshot_chunk_processing_seconds",
    "From an audio chunk arriving to the recogniser's answer to it being returned to the gateway "
    "(audio-to-text lag; a pipelined recogniser, Triton, may return it with a later chunk's call).",
    ["gateway", "engine"],
    buckets=CHUNK_BUCKETS,
)
REPLY_LATENCY = Histogram(
    "earshot_reply_latency_seconds",
    "From the audio chunk that made the recogniser say something arriving to the reply being sent "
    "(the earliest such chunk of a reply, also when its answer came with a later chunk's call).",
    ["gateway", "engine"],
    buckets=CHUNK_BUCKETS,
)
REAL_TIME_FACTOR = Histogram(
    "earshot_real_time_factor",
    "A chunk's earshot_chunk_processing_seconds divided by the duration of its audio.",
    ["gateway", "engine"],
    buckets=RTF_BUCKETS,
)
# Clocked engines (earshot.engines.clocking): one model step per frame period advances every live
# stream with a frame; streams advanced / live streams is the batch fill.
ENGINE_STEPS = Counter(
    "earshot_engine_steps_total", "Model steps run by a clocked engine.", ["engine"]
)
ENGINE_STREAMS_ADVANCED = Counter(
    "earshot_engine_streams_advanced_total",
    "Streams a clocked engine's steps advanced by one frame, summed over its steps.",
    ["engine"],
)
ENGINE_STEP_SECONDS = Counter(
    "earshot_engine_step_seconds_total",
    "Seconds a clocked engine spent in model steps (over its steps: the mean step time).",
    ["engine"],
)
ENGINE_STREAMS_LIVE = Counter(
    "earshot_engine_streams_live_total",
    "Live streams (sending, not yet flushed) at each step of a clocked engine, summed over steps.",
    ["engine"],
)
GATEWAY_LAG = Gauge(
    "earshot_gateway_lag_seconds",
    "How far behind real time the gateway process is, sustained over the last second: the larger "
    "of its event loop's lateness and the age of the oldest audio waiting for the recogniser.",
    ["gateway"],
)
TRITON_BACKLOG = Gauge(
    "earshot_triton_backlog_seconds",
    "How far Triton is behind the gateway process's streams, at its peak over the last second: the "
    "larger of the age of its oldest unanswered request and how far waiting for answers has held a "
    "stream behind real time. Above EARSHOT_MAX_LAG_SECONDS new streams are refused.",
    ["gateway"],
)
INFERENCE_LOAD = Gauge(
    "earshot_inference_load_ratio",
    "The share of the in-process recogniser's workers that the telephony gateway's streams, "
    "those being admitted included, take, from what a second of audio cost to decode (the last "
    "5 s of decoding); above EARSHOT_MAX_INFERENCE_LOAD new streams are refused.",
    ["gateway"],
)
ACTIVE_STREAMS = Gauge(
    "earshot_active_streams", "Audio streams being recognised now.", ["gateway", "engine"]
)
OVERLOAD_REJECTIONS = Counter(
    "earshot_overload_rejections_total",
    "Streams refused or closed with 1013 inference_overloaded: the inference queue stayed full, "
    "or the gateway was behind real time or at its inference load limit.",
    ["gateway", "engine"],
)
ENGINE_ERRORS = Counter(
    "earshot_engine_errors_total", "Streams ended by a recogniser failure.", ["gateway", "engine"]
)
PROTOCOL_ERRORS = Counter(
    "earshot_protocol_errors_total",
    "Streams ended because the client broke the wire protocol.",
    ["gateway", "reason"],
)
IDLE_CLOSES = Counter(
    "earshot_idle_closes_total",
    "Streams closed because no frame came for the idle timeout (EARSHOT_IDLE_TIMEOUT_SECONDS).",
    ["gateway"],
)
FRAMES_RECEIVED = Counter(
    "earshot_frames_received_total", "Binary audio frames received.", ["gateway"]
)
AUDIO_BYTES_RECEIVED = Counter(
    "earshot_audio_bytes_received_total", "Encoded audio bytes received.", ["gateway"]
)
AUDIO_SECONDS_RECEIVED = Counter(
    "earshot_audio_seconds_received_total", "Seconds of audio received.", ["gateway"]
)
SEGMENTS_FINALISED = Counter(
    "earshot_segments_finalised_total", "Final segments stored.", ["gateway", "engine"]
)
STORAGE_ERRORS = Counter(
    "earshot_storage_errors_total", "Writes to a store that failed.", ["store"]
)
STREAM_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0)
STREAM_DURATION = Histogram(
    "earshot_stream_duration_seconds",
    "Served streams by how they ended (client: the client closed or left; else the refusal's "
    "code; error: an unexpected failure), from being admitted to ending.",
    ["gateway", "end"],
    buckets=STREAM_BUCKETS,
)
STREAMS_OPENED = Counter(
    "earshot_streams_opened_total",
    "Streams admitted and opened (their session resumed).",
    ["gateway"],
)
AUDIO_DECODE_SECONDS = Counter(
    "earshot_audio_decode_seconds_total",
    "Time spent decoding and resampling received audio (before recognition).",
    ["gateway"],
)
PARTIALS = Counter("earshot_partials_total", "Partial results made.", ["gateway", "engine"])
CHUNKS_WITHOUT_TEXT = Counter(
    "earshot_chunks_without_text_total",
    "Audio chunks recognised that made no text (no partial, no final).",
    ["gateway", "engine"],
)
FINALS_AT_STREAM_END = Counter(
    "earshot_finals_at_stream_end_total",
    "Finals made when a stream ended (its pending segment finalised), included in "
    "earshot_segments_finalised_total.",
    ["gateway", "engine"],
)
# The in-process inference pool (earshot.engines.batching); Triton and clocked engines have none.
INFERENCE_WORKERS = Gauge(
    "earshot_inference_workers", "Worker threads of the in-process inference pool.", ["engine"]
)
INFERENCE_QUEUE_SLOTS = Gauge(
    "earshot_inference_queue_slots",
    "Chunks the in-process inference pool holds at most, waiting or being decoded.",
    ["engine"],
)
INFERENCE_INFLIGHT = Gauge(
    "earshot_inference_inflight",
    "Chunks in the in-process inference pool now, waiting or being decoded.",
    ["engine"],
)
INFERENCE_QUEUE_TIMEOUTS = Counter(
    "earshot_inference_queue_timeouts_total",
    "Chunks refused because no inference queue slot came free within the queue timeout.",
    ["engine"],
)
INFERENCE_DECODE_SECONDS = Counter(
    "earshot_inference_decode_seconds_total",
    "Time the in-process inference pool's workers spent decoding (all workers together).",
    ["engine"],
)
FRAMES_SKIPPED = Counter(
    "earshot_frames_skipped_total",
    "Audio frames dropped and counted instead of ending the stream (EARSHOT_BAD_FRAME_POLICY=skip).",
    ["gateway", "reason"],
)

# The Talk gateway (rooms, speakers, captions, signaling).
TALK_ROOMS = Gauge("earshot_talk_rooms", "Talk rooms the gateway is joined to now.")
TALK_SPEAKERS = Gauge("earshot_talk_speakers", "Talk speakers whose audio is being recognised now.")
TALK_FRAMES_DROPPED = Counter(
    "earshot_talk_frames_dropped_total",
    "Talk audio frames dropped because a speaker's queue to the recogniser was full.",
)
TALK_CAPTIONS_SENT = Counter(
    "earshot_talk_captions_sent_total", "Transcript messages sent to Talk sessions.", ["kind"]
)
TALK_ADMISSION_REJECTIONS = Counter(
    "earshot_talk_admission_rejections_total",
    "Rooms refused with 503 because their estimated memory would pass the limit.",
)
TALK_SIGNALING_ERRORS = Counter(
    "earshot_talk_signaling_errors_total",
    "Errors from or about the HPB signaling server, by error code (malformed: a bad frame;"
    " no_audio_offered, invalid_offer: a speaker's offer refused).",
    ["code"],
)
TALK_RECONNECTS = Counter(
    "earshot_talk_signaling_reconnects_total", "Signaling connections lost and re-established."
)
# Talk SLIs and live translation (issue 14).
TALK_FIRST_CAPTION_LATENCY = Histogram(
    "earshot_talk_first_caption_latency_seconds",
    "From the first audible frame of a speaker's segment arriving to that segment's first caption"
    " being sent.",
    ["engine"],
    buckets=LATENCY_BUCKETS,
)
TALK_FINAL_CAPTION_LATENCY = Histogram(
    "earshot_talk_final_caption_latency_seconds",
    "From the audio that ended a speaker's segment arriving to its final caption being sent.",
    ["engine"],
    buckets=LATENCY_BUCKETS,
)
TALK_TRANSLATIONS = Counter(
    "earshot_talk_translations_total",
    "Translated finals by outcome: sent, failed (TaskProcessing), dropped (queue full).",
    ["outcome"],
)
TALK_TRANSCRIPT_FINALS = Counter(
    "earshot_talk_transcript_finals_total",
    "Talk finals kept as a call's transcript, by outcome: kept (spooled), failed, dropped.",
    ["outcome"],
)
TALK_TRANSLATION_LATENCY = Histogram(
    "earshot_talk_translation_latency_seconds",
    "From a final caption being sent to its translation being sent.",
    buckets=LATENCY_BUCKETS,
)

# The spool (gateway side) and the persister that drains it (DESIGN.md, Persister sidecar).
STORE_WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, *LATENCY_BUCKETS)

SPOOL_BYTES = Gauge(
    "earshot_spool_bytes", "Bytes in the gateway's spool that the persister has not acknowledged."
)
SPOOL_RECORDS = Gauge(
    "earshot_spool_records",
    "Records this gateway appended to its spool that the persister has not acknowledged.",
)
SPOOL_FSYNC_SECONDS = Histogram(
    "earshot_spool_fsync_seconds",
    "Duration of one group commit's fsync of the spool (one or more finals).",
    buckets=STORE_WRITE_BUCKETS,
)
SPOOL_FULL_REJECTIONS = Counter(
    "earshot_spool_full_rejections_total",
    "Streams closed with 1013 because the spool was full.",
    ["gateway"],
)
SPOOL_CORRUPT_RECORDS = Counter(
    "earshot_spool_corrupt_records_total",
    "Damaged spool records (a torn or corrupt tail) skipped while draining.",
)
SPOOL_UNREADABLE_RECORDS = Counter(
    "earshot_spool_unreadable_records_total",
    "Intact spool records this version cannot store (unknown kind, value out of range), skipped.",
)
SPOOL_QUARANTINED = Counter(
    "earshot_spool_quarantined_total",
    "Unexpected files moved out of the spool into its .quarantine directory.",
)
PERSISTENCE_UP = Gauge(
    "earshot_persistence_up",
    "1 while a persistence component works (spool_writer: its thread runs; drainer: it runs and "
    "is not stuck), 0 once it stopped; /health fails with it.",
    ["component"],
)
CONNECTION_REJECTIONS = Counter(
    "earshot_connection_rejections_total",
    "WebSocket connections refused or ended by the per-process limits (too_many_connections, "
    "session_in_use, session_taken_over).",
    ["gateway", "code"],
)
HANDSHAKE_TIMEOUTS = Counter(
    "earshot_handshake_timeouts_total",
    "Connections closed because their HTTP request did not arrive within the handshake timeout.",
)
PERSISTER_BACKLOG_BYTES = Gauge(
    "earshot_persister_backlog_bytes", "Spool bytes the persister has not drained yet."
)
PERSISTER_OLDEST_UNACKED_AGE = Gauge(
    "earshot_persister_oldest_unacked_age_seconds",
    "Age of the oldest spool record read and not yet acknowledged (0 when caught up).",
)
PERSISTER_WRITES = Counter(
    "earshot_persister_writes_total",
    "Records written to the stores by kind (partial, final, session).",
    ["kind"],
)
PERSISTER_RETRIES = Counter(
    "earshot_persister_retries_total", "Store writes retried after a failure.", ["store"]
)
PERSISTER_WRITE_LATENCY = Histogram(
    "earshot_persister_write_seconds",
    "Duration of one batched store write that succeeded.",
    ["store"],
    buckets=STORE_WRITE_BUCKETS,
)
PERSISTER_BATCH_RECORDS = Histogram(
    "earshot_persister_batch_records",
    "Records per drained batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)

# One session's final numbered alike by two writers (two gateway processes without a shared
# lease): the segment store keeps the first text, this counts each other one it was offered.
SEGMENT_CONFLICTS = Counter(
    "earshot_segment_conflicts_total",
    "Finals offered for a (session, seq) already stored with another text (the first is kept).",
)

# --- series that exist before their first event ------------------------------------------------
#: A labelled counter has no series until its first increment, so rate(), increase() and the
#: overload alert see the first burst as a series appearing at its count, not as a rise: they
#: miss it. A gateway creates its known series at 0 when it starts.
GATEWAY_STORES = ("spool", "segments")


#: The per-stream latency histograms of a telephony gateway (by gateway and engine).
LATENCY_HISTOGRAMS = (
    FIRST_PARTIAL_LATENCY, FINAL_LATENCY, CHUNK_LATENCY, REPLY_LATENCY, REAL_TIME_FACTOR
)  # fmt: skip


def initialise_gateway(gateway: str, engine: str) -> None:
    """Create at 0 the error and throughput counters, the latency histograms and the active
    streams of one gateway (a histogram first seen with its first stream's observations in it
    shows no rate for that stream).

    The active streams are what a pool's autoscaler reads per pod: a pod that has not streamed
    yet must say 0, since a pod without the series blocks or slows the HPA's decision.
    """
    for series in (OVERLOAD_REJECTIONS, ENGINE_ERRORS, SEGMENTS_FINALISED, ACTIVE_STREAMS):
        series.labels(gateway, engine)
    for histogram in LATENCY_HISTOGRAMS:
        histogram.labels(gateway, engine)
    SPOOL_FULL_REJECTIONS.labels(gateway)
    for store in GATEWAY_STORES:
        STORAGE_ERRORS.labels(store)


#: Label values of the Talk counters that the code counts by name: created at 0 with the gateway.
TALK_CAPTION_KINDS = ("partial", "final")
TALK_TRANSLATION_OUTCOMES = ("sent", "failed", "dropped")
TALK_TRANSCRIPT_OUTCOMES = ("kept", "failed", "dropped")


def initialise_talk(engine: str, *, signaling_codes: tuple[str, ...]) -> None:
    """Create at 0 the labelled counters and caption-latency series of a Talk gateway.

    ``signaling_codes`` are the HPB error codes the signaling client handles by name and the codes
    of the offers a room refuses (a server may send other codes: those appear with their first
    occurrence).
    """
    for kind in TALK_CAPTION_KINDS:
        TALK_CAPTIONS_SENT.labels(kind)
    for outcome in TALK_TRANSLATION_OUTCOMES:
        TALK_TRANSLATIONS.labels(outcome)
    for outcome in TALK_TRANSCRIPT_OUTCOMES:
        TALK_TRANSCRIPT_FINALS.labels(outcome)
    for code in signaling_codes:
        TALK_SIGNALING_ERRORS.labels(code)
    for histogram in (TALK_FIRST_CAPTION_LATENCY, TALK_FINAL_CAPTION_LATENCY):
        histogram.labels(engine)


#: The stores a persister writes (the ``store`` label of its retries).
PERSISTER_STORES = ("partials", "segments")


def initialise_persister() -> None:
    """Create at 0 the retry counters (its outage alert reads their rate) and the write latency
    of a drainer."""
    for store in PERSISTER_STORES:
        PERSISTER_RETRIES.labels(store)
        PERSISTER_WRITE_LATENCY.labels(store)


def snapshot(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The JSON ``/metrics`` of the older telephony server, then every sample of ``registry``.

    Returns:
        The older server's groups (:func:`legacy_groups`: ``model_loaded``, ``inference``,
        ``connections``, ``websocket``, ``audio``, ``transcription``, ``storage``), and under
        ``metrics`` every sample: ``{name: [{"labels": {...}, "value": float}, ...]}`` with the
        sample names of the Prometheus text format (``_total``, ``_bucket``, ``_sum``, ...).
    """
    samples: dict[str, list[dict[str, Any]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # creation timestamps, not measurements
            samples.setdefault(sample.name, []).append(
                {"labels": dict(sample.labels), "value": _json_number(sample.value)}
            )
    return {**legacy_groups(_Samples(samples)), "metrics": samples}


def _json_number(value: float) -> float | str:
    # JSON has no NaN or infinity; say them as Prometheus's text format does.
    return value if math.isfinite(value) else str(value)


class _Samples:
    """Sums of samples by name and labels (the snapshot's own ``metrics`` data)."""

    def __init__(self, samples: dict[str, list[dict[str, Any]]]) -> None:
        self._samples = samples

    def total(self, name: str, **labels: str) -> float | None:
        """The sum of ``name``'s samples whose labels include ``labels``; None when none exists."""
        values = [
            s["value"]
            for s in self._samples.get(name, [])
            if all(s["labels"].get(k) == v for k, v in labels.items())
            and isinstance(s["value"], float)
        ]
        return sum(values) if values else None

    def label_values(self, name: str, label: str, **labels: str) -> list[str]:
        """The values ``label`` takes in ``name``'s samples whose labels include ``labels``."""
        return sorted(
            {
                s["labels"][label]
                for s in self._samples.get(name, [])
                if label in s["labels"] and all(s["labels"].get(k) == v for k, v in labels.items())
            }
        )

    def pool(self, name: str, engines: list[str]) -> float | None:
        """:meth:`total` of an inference-pool series over ``engines``; None when none exists."""
        values = [v for engine in engines if (v := self.total(name, engine=engine)) is not None]
        return sum(values) if values else None

    def count(self, name: str, **labels: str) -> int:
        """:meth:`total` as a count (0 when no sample exists yet)."""
        return int(self.total(name, **labels) or 0)

    def seconds(self, name: str, **labels: str) -> float:
        """:meth:`total` as seconds (0.0 when no sample exists yet)."""
        return float(self.total(name, **labels) or 0.0)


#: Ends of a stream that the older server counted as errors (its handler failing).
_ERROR_ENDS = ("error", "engine_error", "storage_unavailable")


def legacy_groups(samples: _Samples) -> dict[str, Any]:
    """The groups and keys of the older telephony server's JSON ``/metrics``, from our metrics.

    Every value is a process-wide total of this gateway (``gateway="g711"``) since it started,
    as there. ``inference``'s pool keys (``max_workers``, ``queue_size``, ``inflight``,
    ``cpu_latency_seconds``) are null where the engine has no in-process pool (Triton, Kyutai).
    """
    g711 = {"gateway": "g711"}
    # The engine this gateway serves (its series exist from the start); other recognisers this
    # process may have made (tests) are not its pool.
    engines = samples.label_values("earshot_overload_rejections_total", "engine", **g711)
    overloaded = samples.count("earshot_overload_rejections_total", **g711)
    timed_out = int(samples.pool("earshot_inference_queue_timeouts_total", engines) or 0)
    closed = samples.count("earshot_stream_duration_seconds_count", **g711)
    at_end = samples.count("earshot_finals_at_stream_end_total", **g711)
    return {
        # This process answers only once its recogniser is open.
        "model_loaded": True,
        "inference": {
            "max_workers": _whole(samples.pool("earshot_inference_workers", engines)),
            "queue_size": _whole(samples.pool("earshot_inference_queue_slots", engines)),
            "inflight": _whole(samples.pool("earshot_inference_inflight", engines)),
            "completed": samples.count("earshot_chunk_processing_seconds_count", **g711),
            "rejected_overloaded": max(0, overloaded - timed_out),
            "timed_out": timed_out,
            "cpu_latency_seconds": samples.pool("earshot_inference_decode_seconds_total", engines),
            "total_latency_seconds": samples.seconds(
                "earshot_chunk_processing_seconds_sum", **g711
            ),
        },
        "connections": {
            "active": samples.count("earshot_active_streams", **g711),
            "opened": samples.count("earshot_streams_opened_total", **g711),
            "closed": closed,
            "disconnected": samples.count(
                "earshot_stream_duration_seconds_count", **g711, end="client"
            ),
            "errors": sum(
                samples.count("earshot_stream_duration_seconds_count", **g711, end=end)
                for end in _ERROR_ENDS
            ),
            "duration_seconds": samples.seconds("earshot_stream_duration_seconds_sum", **g711),
        },
        "websocket": {
            "chunks_received": samples.count("earshot_frames_received_total", **g711),
            "bytes_received": samples.count("earshot_audio_bytes_received_total", **g711),
            "receive_errors": samples.count("earshot_protocol_errors_total", **g711),
            "overload_closes": overloaded,
        },
        "audio": {
            "processed_chunks": samples.count("earshot_chunk_processing_seconds_count", **g711),
            "processing_errors": samples.count("earshot_frames_skipped_total", **g711)
            + samples.count("earshot_protocol_errors_total", **g711, reason="invalid_audio"),
            "processing_seconds": samples.seconds("earshot_audio_decode_seconds_total", **g711),
        },
        "transcription": {
            "partials": samples.count("earshot_partials_total", **g711),
            # As there: every final, those made when a stream ended (auto_finalized) included.
            "finals": samples.count("earshot_segments_finalised_total", **g711),
            "empty_results": samples.count("earshot_chunks_without_text_total", **g711),
            "auto_finalized": at_end,
        },
        "storage": {
            "partial_saves": samples.count("earshot_persister_writes_total", kind="partial"),
            "final_saves": samples.count("earshot_persister_writes_total", kind="final"),
            "save_errors": samples.count("earshot_storage_errors_total")
            + samples.count("earshot_persister_retries_total"),
            "partial_seconds": samples.seconds(
                "earshot_persister_write_seconds_sum", store="partials"
            ),
            "final_seconds": samples.seconds(
                "earshot_persister_write_seconds_sum", store="segments"
            ),
        },
    }


def _whole(value: float | None) -> int | None:
    return None if value is None else int(value)
