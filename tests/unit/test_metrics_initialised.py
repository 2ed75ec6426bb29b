"""Counters an alert or rate() reads exist at 0 from a gateway's start, not from its first event."""

from __future__ import annotations

import prometheus_client

from earshot import metrics


def _exposition() -> str:
    return prometheus_client.generate_latest().decode()


def test_a_gateways_error_counters_start_at_zero() -> None:
    series = 'earshot_overload_rejections_total{engine="never-used",gateway="test-gw"}'
    assert series not in _exposition()

    metrics.initialise_gateway("test-gw", "never-used")

    exposition = _exposition()
    for line in (
        f"{series} 0.0",
        'earshot_engine_errors_total{engine="never-used",gateway="test-gw"} 0.0',
        'earshot_segments_finalised_total{engine="never-used",gateway="test-gw"} 0.0',
        'earshot_spool_full_rejections_total{gateway="test-gw"} 0.0',
    ):
        assert line in exposition.splitlines(), line
    assert any(  # shared by every gateway of the process: present, whatever its count
        line.startswith('earshot_storage_errors_total{store="segments"} ')
        for line in exposition.splitlines()
    )
