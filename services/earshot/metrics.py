"""Prometheus metrics of the data plane (names start with ``earshot_``).

Latency histograms share one bucket ladder from 50 ms to 10 s (DESIGN.md, Metrics), with finer steps
below 50 ms for the per-chunk processing delay, whose target is tens of milliseconds.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
    "From the chunk that ended a segment (or the stream) arriving to its final being stored and sent.",
    ["gateway", "engine"],
    buckets=LATENCY_BUCKETS,
)
CHUNK_LATENCY = Histogram(
    "earshot_chunk_processing_seconds",
    "From an audio chunk arriving to the recogniser having processed it (audio-to-text lag).",
    ["gateway", "engine"],
    buckets=CHUNK_BUCKETS,
)
REAL_TIME_FACTOR = Histogram(
    "earshot_real_time_factor",
    "Processing time of a chunk divided by the duration of its audio.",
    ["gateway", "engine"],
    buckets=RTF_BUCKETS,
)
ACTIVE_STREAMS = Gauge(
    "earshot_active_streams", "Audio streams being recognised now.", ["gateway", "engine"]
)
OVERLOAD_REJECTIONS = Counter(
    "earshot_overload_rejections_total",
    "Streams closed with 1013 because the inference queue stayed full.",
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
