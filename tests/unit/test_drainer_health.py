"""A drainer that stops or hangs makes its process unhealthy (earshot.persistence.draining)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from earshot.events import Partial, Segment, SessionId
from earshot.persistence import journaling, sidecar
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.persistence.writing import SpoolWriter
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import SegmentStore, StorageError

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
POLICY = DrainPolicy(batch_size=10, poll_seconds=0.01, retry_max_seconds=0.05, stall_seconds=0.5)


@pytest_asyncio.fixture
async def segments(tmp_path: Path) -> AsyncIterator[SegmentStore]:
    store = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    yield store
    await store.aclose()


class HangingSegments:
    """A segment store whose writes never return (a connection that hangs half open)."""

    def __init__(self, inner: SegmentStore) -> None:
        self.inner = inner
        self.entered = asyncio.Event()

    async def add_segments(
        self,
        batch: Sequence[Segment],
        *,
        users: Mapping[SessionId, str | None],
        languages: Mapping[SessionId, str] | None = None,
    ) -> None:
        self.entered.set()
        await asyncio.Event().wait()


class DownSegments:
    """A segment store that is down: every write fails (a retried outage, not a stall)."""

    async def add_segments(
        self,
        batch: Sequence[Segment],
        *,
        users: Mapping[SessionId, str | None],
        languages: Mapping[SessionId, str] | None = None,
    ) -> None:
        raise StorageError("mariadb is down")


class BrokenPartials(MemoryPartialStore):
    """A partial store with a bug: it raises what no store may raise."""

    async def write_batch(
        self, partials: Sequence[Partial], commits: Mapping[SessionId, int]
    ) -> None:
        raise RuntimeError("a bug")


async def spooled(spool_dir: Path) -> None:
    writer = SpoolWriter(spool_dir, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    await writer.append(Segment(SessionId("call-1"), 1, "hello", T0))
    await writer.close()


def health(drainer: Drainer) -> tuple[str, dict[str, object]]:
    status, _, body = sidecar._route("GET", "/health", drainer)
    return status, json.loads(body)


async def test_a_drainer_stuck_in_a_hanging_store_write_fails_health(
    tmp_path: Path, segments: SegmentStore
) -> None:
    await spooled(tmp_path)
    hanging = HangingSegments(segments)
    drainer = Drainer(
        tmp_path,
        partials=MemoryPartialStore(ttl_seconds=60),
        segments=hanging,  # type: ignore[arg-type]
        policy=POLICY,
    )
    task = asyncio.create_task(drainer.run())
    try:
        await asyncio.wait_for(hanging.entered.wait(), 5.0)
        assert drainer.healthy
        assert health(drainer)[0] == "200 OK"
        for _ in range(100):  # the stall time is 0.5 s
            if not drainer.healthy:
                break
            await asyncio.sleep(0.1)
        status, body = health(drainer)
        assert status == "503 Service Unavailable"
        assert body["status"] == "failing"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_oldest_records_age_grows_while_a_store_write_hangs(
    tmp_path: Path, segments: SegmentStore
) -> None:
    # A hung write is what EarshotPersisterLagging must see: the age of what waits in the spool,
    # not the age it had when the write began.
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    await writer.append(Segment(SessionId("call-1"), 1, "hello", datetime.now(UTC)))
    await writer.close()
    hanging = HangingSegments(segments)
    drainer = Drainer(
        tmp_path,
        partials=MemoryPartialStore(ttl_seconds=60),
        segments=hanging,  # type: ignore[arg-type]
        policy=POLICY,
    )
    task = asyncio.create_task(drainer.run())
    try:
        await asyncio.wait_for(hanging.entered.wait(), 5.0)
        before = _sample("earshot_persister_oldest_unacked_age_seconds")
        await asyncio.sleep(1.0)
        after = _sample("earshot_persister_oldest_unacked_age_seconds")
        assert after - before >= 0.9, (before, after)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


async def test_a_store_that_is_down_is_retried_without_failing_health(tmp_path: Path) -> None:
    await spooled(tmp_path)
    drainer = Drainer(
        tmp_path,
        partials=MemoryPartialStore(ttl_seconds=60),
        segments=DownSegments(),  # type: ignore[arg-type]
        policy=POLICY,
    )
    task = asyncio.create_task(drainer.run())
    try:
        for _ in range(15):  # three times the stall time, every retry beating
            await asyncio.sleep(0.1)
            assert drainer.healthy
    finally:
        drainer.stop(0.0)
        await task


async def test_a_drainer_that_stops_on_an_error_fails_health(
    tmp_path: Path, segments: SegmentStore
) -> None:
    await spooled(tmp_path)
    drainer = Drainer(
        tmp_path, partials=BrokenPartials(ttl_seconds=60), segments=segments, policy=POLICY
    )
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(drainer.run(), 10.0)
    assert not drainer.healthy
    assert health(drainer)[0] == "503 Service Unavailable"


async def test_the_persister_process_ends_with_its_drainers_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Drainer) -> int:
        raise RuntimeError("a bug in the drainer")

    monkeypatch.setattr(Drainer, "_round", broken)
    settings = Settings(
        host="127.0.0.1",
        persister_port=0,
        spool_dir=tmp_path / "spool",
        segments_url=f"sqlite:///{tmp_path / 'seg.db'}",
    )
    # Not a process that answers 503 forever: it exits, so its container restarts.
    with pytest.raises(RuntimeError, match="a bug in the drainer"):
        await asyncio.wait_for(sidecar.run(settings), 10.0)


async def test_a_spool_writer_whose_disk_stops_answering_is_not_alive_until_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answering = threading.Event()
    entered = threading.Event()
    real_fsync = os.fsync

    def hanging_fsync(fd: int) -> None:
        entered.set()
        answering.wait()
        real_fsync(fd)

    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30, stall_seconds=1.0)
    writer.start()
    monkeypatch.setattr(os, "fsync", hanging_fsync)
    final = asyncio.create_task(writer.append(Segment(SessionId("call-1"), 1, "hello", T0)))
    try:
        await asyncio.to_thread(entered.wait, 5.0)
        assert writer.alive  # a slow disk is not a dead one
        await asyncio.sleep(1.2)
        assert not writer.alive
    finally:
        answering.set()
    await asyncio.wait_for(final, 5.0)
    for _ in range(100):  # the final is told before the writer thread ends its batch
        if writer.alive:
            break
        await asyncio.sleep(0.01)
    assert writer.alive
    await writer.close()


@pytest.mark.parametrize(("variable", "unhealthy"), [(None, False), ("1", True)])
async def test_a_gateways_spool_writer_counts_as_stalled_after_the_settings_stall_time(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    segments: SegmentStore,
    variable: str | None,
    unhealthy: bool,
) -> None:
    # EARSHOT_SPOOL_STALL_SECONDS reaches the writer a gateway's journal opens: a disk hung for
    # 1.5 s fails the journal's health at a 1 s stall time, not at the default's 30 s.
    if variable is not None:
        monkeypatch.setenv("EARSHOT_SPOOL_STALL_SECONDS", variable)
    settings = Settings(spool_dir=tmp_path / "spool", persister="sidecar")
    answering = threading.Event()
    entered = threading.Event()
    real_fsync = os.fsync

    def hanging_fsync(fd: int) -> None:
        entered.set()
        answering.wait()
        real_fsync(fd)

    async with journaling.open_journal(
        settings, partials=MemoryPartialStore(ttl_seconds=60), segments=segments
    ) as journal:
        session = await journal.open_session(SessionId("call-1"), "alice")
        monkeypatch.setattr(os, "fsync", hanging_fsync)
        final = asyncio.create_task(journal.final(Segment(SessionId("call-1"), session, "hi", T0)))
        try:
            await asyncio.to_thread(entered.wait, 5.0)
            assert entered.is_set()
            await asyncio.sleep(1.5)
            assert journal.healthy is not unhealthy
        finally:
            answering.set()
        await asyncio.wait_for(final, 10.0)
