"""The operator's metrics: reconcile durations and resources by phase."""

from __future__ import annotations

import socket

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from earshot_operator.metrics import MetricsServer, OperatorMetrics


def _gauge(metrics: OperatorMetrics) -> dict[tuple[str, str], float]:
    text = metrics.exposition().decode()
    return {
        (s.labels["kind"], s.labels["phase"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "earshot_operator_resources"
    }


def test_resources_are_counted_by_their_latest_phase() -> None:
    metrics = OperatorMetrics()
    metrics.record_phase("TalkRoom", "ns", name="a", phase="Provisioning")
    metrics.record_phase("TalkRoom", "ns", name="b", phase="Provisioning")
    metrics.record_phase("TalkRoom", "ns", name="a", phase="Ready")
    assert _gauge(metrics) == {("TalkRoom", "Provisioning"): 1, ("TalkRoom", "Ready"): 1}


def test_deleted_resources_leave_a_zero_not_a_stale_count() -> None:
    metrics = OperatorMetrics()
    metrics.record_phase("TalkRoom", "ns", name="a", phase="Ready")
    metrics.record_phase("TalkRoom", "ns", name="a", phase=None)
    assert _gauge(metrics) == {("TalkRoom", "Ready"): 0}


def test_reconcile_durations_are_observed_per_kind() -> None:
    metrics = OperatorMetrics()
    with metrics.timing("TranscriptionSession"):
        pass
    text = metrics.exposition().decode()
    assert (
        'earshot_operator_reconcile_duration_seconds_count{kind="TranscriptionSession"} 1.0' in text
    )


async def test_healthz_fails_while_the_health_check_says_so() -> None:
    state = {"healthy": True}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = MetricsServer(OperatorMetrics(), port=port, healthy=lambda: state["healthy"])
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as ok:
                assert ok.status == 200
            state["healthy"] = False
            async with http.get(f"http://127.0.0.1:{port}/healthz") as failing:
                assert (failing.status, await failing.text()) == (503, "the drift check stopped")
    finally:
        await server.stop()
