"""The operator's metrics: reconcile durations and resources by phase."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from earshot_operator.metrics import OperatorMetrics


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
