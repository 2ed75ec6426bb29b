"""The operator serves its own Prometheus metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from earshot_operator.clients import KubeClient
from tests.e2e import helpers
from tests.e2e.controlplane.operators import OperatorProcess

pytestmark = pytest.mark.asyncio


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


async def test_metrics_report_reconcile_durations_and_resources_by_phase(
    api: KubeClient, namespace: str, operator_process: OperatorProcess
) -> None:
    body = helpers.session_body("metered", namespace)
    await api.create(body)
    await helpers.eventually(lambda: helpers.phase_is(api, body, "Provisioning"))
    metrics = await asyncio.to_thread(_scrape, operator_process.metrics_url)

    counts = metrics["earshot_operator_reconcile_duration_seconds_count"]
    assert any(
        labels == {"kind": "TranscriptionSession"} and value >= 1 for labels, value in counts
    )
    assert "earshot_operator_reconcile_duration_seconds_bucket" in metrics
    resources = metrics["earshot_operator_resources"]
    assert any(
        labels == {"kind": "TranscriptionSession", "phase": "Provisioning"} and value >= 1
        for labels, value in resources
    )
