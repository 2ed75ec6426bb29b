"""A gateway gives the memory its ended streams freed back also while other streams go on
(:mod:`earshot.gateways.g711.releasing`), over a real uvicorn gateway and real WebSocket clients."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from websockets.asyncio.client import connect

from earshot.gateways.g711 import releasing
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import session_url
from tests.integration.scripted import CHUNK, heard, scripted_gateway, stored


def releases() -> float:
    return REGISTRY.get_sample_value("earshot_memory_releases_total", {"gateway": "g711"}) or 0.0


async def released(count: float) -> float:
    """The releases counted once there are ``count`` (what there is after 10 s)."""
    for _ in range(100):
        if releases() >= count:
            break
        await asyncio.sleep(0.1)
    return releases()


async def test_a_stream_ending_while_another_goes_on_gives_freed_memory_back(
    settings: Settings, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Callers that reconnect keep a gateway from ever being without a stream (bench/soak.py):
    # the memory of those that ended must come back all the same, at most once per interval.
    monkeypatch.setattr(releasing, "RELEASE_INTERVAL_SECONDS", 0.0)
    async with scripted_gateway(settings, services) as (base, _):
        async with connect(session_url(base, "stays")) as stays:
            await stays.send(CHUNK)
            assert (await heard(stays))["type"] == "partial"
            before = releases()
            async with connect(session_url(base, "leaves")) as leaves:
                await leaves.send(CHUNK)
                assert (await heard(leaves))["type"] == "partial"
            assert await released(before + 1) == before + 1
            assert len(await stored(services, "leaves", 1)) == 1
        assert await released(before + 2) == before + 2
