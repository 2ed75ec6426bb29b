"""Counters an alert or rate() reads exist at 0 from a gateway's start, not from its first event."""

from __future__ import annotations

import asyncio
from pathlib import Path

import prometheus_client

from earshot import metrics
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore


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


async def test_a_drainers_retry_counters_start_at_zero(tmp_path: Path) -> None:
    metrics.PERSISTER_RETRIES.clear()
    assert "earshot_persister_retries_total{" not in _exposition()
    segments = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    drainer = Drainer(
        tmp_path,
        partials=MemoryPartialStore(ttl_seconds=60),
        segments=segments,
        policy=DrainPolicy(batch_size=10, poll_seconds=0.01, retry_max_seconds=0.05),
    )
    running = asyncio.create_task(drainer.run())
    try:
        for _ in range(100):
            if "earshot_persister_retries_total{" in _exposition():
                break
            await asyncio.sleep(0.01)
    finally:
        drainer.stop(0.0)
        await running
        await segments.aclose()
    lines = _exposition().splitlines()
    for store in ("partials", "segments"):
        assert f'earshot_persister_retries_total{{store="{store}"}} 0.0' in lines
