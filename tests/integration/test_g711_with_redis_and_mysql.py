"""The telephony gateway on real Redis and MariaDB servers (PROTOCOLS.md §1 storage)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import connect

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.gateways.g711 import client, serving
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tiny_model_cache: Path, tmp_path: Path, redis_url: str, mysql_url: str) -> Settings:
    return Settings(
        cache_dir=tiny_model_cache,
        partials_url=redis_url,
        segments_url=mysql_url,
        spool_dir=tmp_path / "spool",
    )


async def _rows(mysql_url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_async_engine(mysql_url.replace("mysql://", "mysql+aiomysql://", 1))
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(sa.text(sql), params)]
    finally:
        await engine.dispose()


def _frames(*, trailing_silence: bool) -> list[bytes]:
    audio = demoing.sample_audio()
    if trailing_silence:
        audio = streaming.with_trailing_silence(audio, Codec.ALAW, 8000)
    return client.frames_of(audio, codec=Codec.ALAW, rate=8000)


async def _stream(url: str) -> client.StreamResult:
    frames = _frames(trailing_silence=True)
    return await client.stream(url, frames, frame_seconds=0.02, speed=0, linger=5.0)


async def test_partial_hash_and_counter_follow_the_stream_in_redis(
    settings: Settings, services: Services, redis_url: str
) -> None:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with running_gateway(settings, services) as base:
            async with connect(session_url(base, "hot")) as ws:
                for frame in _frames(trailing_silence=False):
                    await ws.send(frame)
                last: dict[str, object] = {}
                with contextlib.suppress(TimeoutError):
                    while True:
                        last = json.loads(await asyncio.wait_for(ws.recv(), 3.0))
                assert last["type"] == "partial"
                current = await r.hgetall("asr:sess:hot:current")
                ttl = await r.ttl("asr:sess:hot:current")
                counter_while_open = await r.get("asr:sess:hot:seq")
            finals_seen = int(last["seq"]) - 1  # type: ignore[call-overload]
        assert current["content"] == last["text"]
        assert int(current["seq"]) == last["seq"]
        assert float(current["ts"]) > 0
        assert 0 < ttl <= settings.partial_ttl_seconds
        assert int(counter_while_open or 0) == finals_seen
        # The disconnect finalised the pending partial: counter raised, hash gone.
        assert int(await r.get("asr:sess:hot:seq") or 0) == last["seq"]
        assert await r.exists("asr:sess:hot:current") == 0
    finally:
        await r.aclose()


async def test_segments_land_in_mysql_once_each_with_the_protocol_schema(
    settings: Settings, services: Services, mysql_url: str
) -> None:
    async with running_gateway(settings, services) as base:
        result = await _stream(session_url(base, "cold"))
    rows = await _rows(
        mysql_url,
        "SELECT segment_seq, content FROM segments WHERE session_id = :s ORDER BY segment_seq",
        s="cold",
    )
    assert [(f["seq"], f["text"]) for f in result.finals] == rows[: len(result.finals)]
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    assert await _rows(mysql_url, "SELECT id FROM sessions WHERE id = 'cold'") == [("cold",)]
    unique = await _rows(
        mysql_url,
        "SELECT GROUP_CONCAT(column_name ORDER BY seq_in_index) FROM information_schema.statistics"
        " WHERE table_schema = DATABASE() AND table_name = 'segments' AND non_unique = 0"
        " AND index_name <> 'PRIMARY' GROUP BY index_name",
    )
    assert ("session_id,segment_seq",) in unique


async def test_reconnect_continues_numbering_from_the_stored_maximum(
    settings: Settings, services: Services, mysql_url: str, redis_url: str
) -> None:
    async with running_gateway(settings, services) as base:
        first = await _stream(session_url(base, "resume"))
    first_max = int(str((await _rows(mysql_url, "SELECT MAX(segment_seq) FROM segments"))[0][0]))
    # A new gateway process: nothing in memory, only what Redis and MySQL hold. Redis is flushed
    # too, so the numbering can only come from MySQL's maximum.
    r = aioredis.Redis.from_url(redis_url)
    await r.flushall()
    await r.aclose()
    async with (
        serving.open_services(settings) as fresh,
        running_gateway(settings, fresh) as base,
    ):
        second = await _stream(session_url(base, "resume"))
    stored = await _rows(
        mysql_url, "SELECT segment_seq FROM segments WHERE session_id = 'resume' ORDER BY 1"
    )
    assert first.finals
    assert first_max >= first.finals[-1]["seq"]
    assert second.finals[0]["seq"] == first_max + 1
    assert [s for (s,) in stored] == list(range(1, len(stored) + 1))


async def test_disconnect_finalises_the_pending_partial_into_mysql(
    settings: Settings, services: Services, mysql_url: str
) -> None:
    async with running_gateway(settings, services) as base, connect(session_url(base, "cut")) as ws:
        for frame in _frames(trailing_silence=False):
            await ws.send(frame)
        last: dict[str, object] = {}
        with contextlib.suppress(TimeoutError):
            while True:
                last = json.loads(await asyncio.wait_for(ws.recv(), 3.0))
    assert last["type"] == "partial"
    rows = await _rows(
        mysql_url,
        "SELECT segment_seq, content FROM segments WHERE session_id = 'cut' ORDER BY 1 DESC LIMIT 1",
    )
    assert rows[0][0] == last["seq"]
    assert str(rows[0][1]).startswith(str(last["text"]))
