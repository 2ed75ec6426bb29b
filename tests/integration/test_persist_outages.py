"""Store outages under live streams: the real gateway and WebSocket clients, the tiny Paraformer,
``earshot persister`` as a subprocess, real MariaDB and Redis that the tests stop and start."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from earshot.gateways.g711 import client
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url
from tests.persister import PersisterProcess, speech_frames, stored_finals, wait_until
from tests.servers import MariaDbServer, RedisServer

pytestmark = pytest.mark.integration

FRAME_MS = 100


@pytest.fixture
def settings(tiny_model_cache: Path, tmp_path: Path, redis_url: str, mysql_url: str) -> Settings:
    return Settings(
        cache_dir=tiny_model_cache,
        partials_url=redis_url,
        segments_url=mysql_url,
        spool_dir=tmp_path / "spool",
        persister="sidecar",
        inference_queue_timeout_seconds=10.0,
    )


@pytest_asyncio.fixture
async def persister(
    tmp_path: Path, settings: Settings, mysql_url: str, redis_url: str
) -> AsyncIterator[PersisterProcess]:
    process = PersisterProcess(
        tmp_path / "persister",
        spool_dir=settings.resolved_spool_dir(),
        segments_url=mysql_url,
        partials_url=redis_url,
    )
    await process.start()
    yield process
    await process.stop()


async def _stream(url: str, *, repeat: int) -> client.StreamResult:
    frames = speech_frames(repeat=repeat, frame_ms=FRAME_MS)
    return await client.stream(url, frames, frame_seconds=FRAME_MS / 1000, speed=1.0, linger=5.0)


async def test_mysql_down_for_20_s_under_20_sessions_loses_and_duplicates_no_final(
    settings: Settings,
    services: Services,
    persister: PersisterProcess,
    mariadb_server: MariaDbServer,
    mysql_url: str,
) -> None:
    sessions = [f"outage-{n:02d}" for n in range(20)]
    async with running_gateway(settings, services) as base:
        streams = [asyncio.create_task(_stream(session_url(base, s), repeat=3)) for s in sessions]
        await asyncio.sleep(5.0)
        assert not any(t.done() for t in streams), "the streams ended before the outage"
        await asyncio.to_thread(mariadb_server.stop)
        down_since = time.monotonic()
        await asyncio.sleep(20.0)
        streaming_during_outage = not all(t.done() for t in streams)
        during = _gauges((await persister.get("/metrics")).text)
        await asyncio.to_thread(mariadb_server.start)
        outage = time.monotonic() - down_since
        results = await asyncio.gather(*streams)

        async def everything_stored() -> bool:
            for session, result in zip(sessions, results, strict=True):
                if len(await stored_finals(mysql_url, session)) < len(result.finals):
                    return False
            return await persister.caught_up()

        await wait_until(everything_stored, 60.0, what="the persister to catch up")
    assert outage >= 20.0
    assert streaming_during_outage
    # Finals wait in the spool while MySQL is down: the backlog and its age show it.
    assert during["earshot_persister_backlog_bytes"] > 0
    assert during["earshot_persister_oldest_unacked_age_seconds"] > 0
    for session, result in zip(sessions, results, strict=True):
        assert result.errors == [], session
        assert result.finals, f"{session} received no final"
        stored = await stored_finals(mysql_url, session)
        assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1)), session
        assert stored[: len(result.finals)] == [(f["seq"], f["text"]) for f in result.finals]
    retries = (await persister.get("/metrics")).text
    assert 'earshot_persister_retries_total{store="segments"}' in retries


async def test_mysql_down_refuses_a_new_stream_at_open_with_1011_and_logs_why(
    settings: Settings,
    services: Services,
    mariadb_server: MariaDbServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="earshot.gateways.g711.app")
    async with running_gateway(settings, services) as base:
        await asyncio.to_thread(mariadb_server.stop)
        try:
            async with connect(session_url(base, "opened-in-outage")) as ws:
                refused = json.loads(await asyncio.wait_for(ws.recv(), 30.0))
                await asyncio.wait_for(ws.wait_closed(), 10.0)
        finally:
            await asyncio.to_thread(mariadb_server.start)
    assert refused["type"] == "error"
    assert refused["code"] == "storage_unavailable"
    assert refused["retryable"] is True
    assert ws.close_code == 1011
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        line.startswith("session opened-in-outage: refused at open") and "segment store" in line
        for line in logged
    ), logged


async def test_redis_stopped_and_restarted_resumes_partials_and_keeps_finals(
    settings: Settings,
    services: Services,
    persister: PersisterProcess,
    redis_server: RedisServer,
    redis_url: str,
    mysql_url: str,
) -> None:
    session = "hot-restart"
    key = f"asr:sess:{session}:current"

    async def partial_in_redis() -> bool:
        return await _redis_exists(redis_url, key)

    async with running_gateway(settings, services) as base:
        streaming = asyncio.create_task(_stream(session_url(base, session), repeat=2))
        await wait_until(partial_in_redis, 10.0, what="a partial in Redis")
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(4.0)
        # Redis runs without persistence: it restarts empty, so a partial found from now on was
        # written after the restart (checking for emptiness first would race the persister).
        await asyncio.to_thread(redis_server.start)
        await wait_until(partial_in_redis, 10.0, what="partials to resume after the restart")
        assert not streaming.done(), "the stream ended before the partials resumed"
        result = await streaming

    async def counter_caught_up() -> bool:
        counter = await _redis_get(redis_url, f"asr:sess:{session}:seq")
        return int(counter or 0) >= result.finals[-1]["seq"]

    await wait_until(counter_caught_up, 10.0, what="the final counter in Redis")
    stored = await stored_finals(mysql_url, session)
    assert stored[: len(result.finals)] == [(f["seq"], f["text"]) for f in result.finals]
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))


async def _redis_exists(url: str, key: str) -> bool:
    # A fresh connection per command: a pooled one would be stale after the restart.
    r = aioredis.Redis.from_url(url)
    try:
        return bool(await r.exists(key))
    finally:
        await r.aclose()


async def _redis_get(url: str, key: str) -> bytes | str | None:
    r = aioredis.Redis.from_url(url)
    try:
        value: bytes | str | None = await r.get(key)
        return value
    finally:
        await r.aclose()


def _gauges(exposition: str) -> dict[str, float]:
    values = {}
    for line in exposition.splitlines():
        name, _, value = line.partition(" ")
        if name and not name.startswith("#") and "{" not in name:
            values[name] = float(value)
    return values
