"""The older server's JSON metrics, computed from our counters: the values its clients read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from earshot import metrics


def test_finals_count_every_final_and_auto_finalized_those_made_at_a_streams_end() -> None:
    # The older server counted a final saved when a stream ended both as a final and as
    # auto_finalized (PyStreamASR's api/endpoints.py): finals == final_saves there.
    registry = CollectorRegistry()
    labels = ["gateway", "engine"]
    finalised = Counter("earshot_segments_finalised", "", labels, registry=registry)
    at_end = Counter("earshot_finals_at_stream_end", "", labels, registry=registry)
    finalised.labels("g711", "paraformer").inc(5)
    at_end.labels("g711", "paraformer").inc(2)
    finalised.labels("talk", "paraformer").inc(7)  # another gateway's are not this one's

    transcription = metrics.snapshot(registry)["transcription"]

    assert (transcription["finals"], transcription["auto_finalized"]) == (5, 2)
