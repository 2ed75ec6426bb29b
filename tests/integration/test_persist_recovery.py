"""Crashes and a full spool: ``earshot persister`` as a subprocess, real MariaDB and Redis, the real
gateway with WebSocket clients where a client is part of the story."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.exc import ProgrammingError

from earshot.events import Segment, SessionId
from earshot.gateways.g711 import client, messages, serving
from earshot.persistence import spool
from earshot.persistence.writing import SpoolWriter
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url
from tests.persister import PersisterProcess, rows, speech_frames, stored_finals, wait_until

pytestmark = pytest.mark.integration

# Paced (not as fast as possible), so that results arrive while the client still sends and it
# lingers for the last final instead of closing before the server has answered.
SPEED = 4.0


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def settings(tiny_model_cache: Path, spool_dir: Path, redis_url: str, mysql_url: str) -> Settings:
    return Settings(
        cache_dir=tiny_model_cache,
        partials_url=redis_url,
        segments_url=mysql_url,
        spool_dir=spool_dir,
        persister="sidecar",
    )


@pytest_asyncio.fixture
async def persister(
    tmp_path: Path, spool_dir: Path, mysql_url: str, redis_url: str
) -> AsyncIterator[PersisterProcess]:
    """A persister, not started: each test starts it when its story needs it."""
    process = PersisterProcess(
        tmp_path / "persister",
        spool_dir=spool_dir,
        segments_url=mysql_url,
        partials_url=redis_url,
        batch_size=10,
    )
    yield process
    await process.stop()


async def _spooled(spool_dir: Path, finals: list[Segment], *, segment_bytes: int = 1 << 20) -> Path:
    """A sealed stream holding ``finals``, as a gateway that has stopped leaves it."""
    writer = SpoolWriter(spool_dir, segment_bytes=segment_bytes, max_bytes=1 << 30)
    writer.start()
    try:
        await asyncio.gather(*(writer.append(f) for f in finals))
    finally:
        await writer.close()
    return writer.stream


def _final(session: str, seq: int) -> Segment:
    return Segment(SessionId(session), seq, f"{session} says {seq}", datetime.now(UTC))


async def _count(mysql_url: str) -> int:
    try:
        (count,) = (await rows(mysql_url, "SELECT COUNT(*) FROM segments"))[0]
    except ProgrammingError:
        return 0  # the persister has not created the table yet
    assert isinstance(count, int)
    return count


async def test_persister_killed_mid_batch_and_restarted_loses_and_duplicates_nothing(
    spool_dir: Path, persister: PersisterProcess, mysql_url: str
) -> None:
    sessions = [f"kill-{n:02d}" for n in range(30)]
    # Interleaved as live sessions would write them: every batch spans many sessions.
    total = [_final(s, seq) for seq in range(1, 101) for s in sessions]
    await _spooled(spool_dir, total, segment_bytes=64 * 1024)
    await persister.start()

    async def some_stored() -> bool:
        return await _count(mysql_url) > 0

    await wait_until(some_stored, 30.0, what="the first batch in MySQL")
    assert await persister.stop(hard=True) == -9
    stored_at_kill = await _count(mysql_url)
    assert 0 < stored_at_kill < len(total), "the kill did not land in the middle of draining"
    await persister.start()

    async def all_stored() -> bool:
        return await _count(mysql_url) >= len(total) and await persister.caught_up()

    await wait_until(all_stored, 120.0, what="the restarted persister to drain")
    for session in sessions:
        assert await stored_finals(mysql_url, session) == [
            (seq, f"{session} says {seq}") for seq in range(1, 101)
        ]
    assert await _count(mysql_url) == len(total)
    assert spool.streams(spool_dir) == []


async def test_persister_sigterm_drains_what_is_spooled_before_it_exits(
    spool_dir: Path, persister: PersisterProcess, mysql_url: str
) -> None:
    total = [_final(f"term-{n}", seq) for seq in range(1, 51) for n in range(20)]
    await _spooled(spool_dir, total)
    await persister.start()
    assert await persister.stop() == 0
    assert await _count(mysql_url) == len(total)
    assert spool.streams(spool_dir) == []


async def test_gateway_restart_continues_numbering_for_a_reconnecting_client(
    settings: Settings, persister: PersisterProcess, mysql_url: str
) -> None:
    frames = speech_frames()
    async with (
        serving.open_services(settings) as services,
        running_gateway(settings, services) as base,
    ):
        first = await client.stream(
            session_url(base, "again"), frames, frame_seconds=0.02, speed=SPEED, linger=5.0
        )
    # A new gateway process: nothing in memory; no persister has run, so neither Redis nor MySQL
    # knows the session: the numbering can only come from the spool.
    assert await stored_finals(mysql_url, "again") == []
    async with (
        serving.open_services(settings) as services,
        running_gateway(settings, services) as base,
    ):
        second = await client.stream(
            session_url(base, "again"), frames, frame_seconds=0.02, speed=SPEED, linger=5.0
        )
    await persister.start()

    async def drained() -> bool:
        return spool.streams(settings.resolved_spool_dir()) == []

    await wait_until(drained, 30.0, what="the persister to drain both gateways' streams")
    stored = await stored_finals(mysql_url, "again")
    assert first.finals
    assert second.finals
    assert second.finals[0]["seq"] > first.finals[-1]["seq"]
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    received = {(f["seq"], f["text"]) for f in [*first.finals, *second.finals]}
    assert received <= set(stored)


async def test_spool_full_refuses_new_audio_with_a_retryable_error_and_keeps_every_final(
    settings: Settings, persister: PersisterProcess, mysql_url: str
) -> None:
    bounded = settings.model_copy(update={"spool_max_bytes": 2000})
    received: list[messages.ServerMessage] = []
    async with (
        serving.open_services(bounded) as services,
        running_gateway(bounded, services) as base,
    ):
        result = await client.stream(
            session_url(base, "brimful"),
            speech_frames(repeat=3),
            frame_seconds=0.02,
            speed=SPEED,
            on_message=received.append,
        )
    assert result.errors == [
        {
            "type": "error",
            "code": "spool_full",
            "message": "results cannot be persisted fast enough (spool full); retry later.",
            "retryable": True,
        }
    ]
    assert (result.close_code, result.close_reason) == (1013, "spool full")
    await persister.start()

    async def drained() -> bool:
        return spool.streams(settings.resolved_spool_dir()) == []

    await wait_until(drained, 30.0, what="the persister to drain the full spool")
    stored = await stored_finals(mysql_url, "brimful")
    assert stored[: len(result.finals)] == [(f["seq"], f["text"]) for f in result.finals]
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    before_error = [m for m in received if m["type"] != "error"]
    if before_error and before_error[-1]["type"] == "partial":
        # The audio already accepted was finalised after the refusal: that final is kept too.
        assert stored[-1][0] == before_error[-1]["seq"]


async def test_a_torn_spool_tail_is_skipped_with_a_log_line_and_a_metric_and_draining_goes_on(
    spool_dir: Path, persister: PersisterProcess, mysql_url: str
) -> None:
    crashed = await _spooled(spool_dir, [_final("torn", seq) for seq in range(1, 6)])
    # The crash tore the last record (final 5): its fsync never returned, so no client saw it
    # and the restarted gateway numbered from 5 again.
    segment = crashed / spool.segment_name(1)
    segment.write_bytes(segment.read_bytes()[:-7])
    await _spooled(spool_dir, [_final("torn", seq) for seq in range(5, 8)])
    await persister.start()

    async def drained() -> bool:
        return spool.streams(spool_dir) == []

    await wait_until(drained, 30.0, what="the persister to drain past the damage")
    assert [seq for seq, _ in await stored_finals(mysql_url, "torn")] == list(range(1, 8))
    assert "truncated record at the end of the file" in persister.log_tail(200)
    exposition = (await persister.get("/metrics")).text
    assert "earshot_spool_corrupt_records_total 1.0" in exposition
