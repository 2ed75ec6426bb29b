"""Draining a spool into memory partials and SQLite segments (earshot.persistence.draining)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import resuming, spool
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.persistence.records import SessionOpened
from earshot.persistence.writing import SpoolWriter
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import SegmentStore, StorageError
from earshot.storage.sql_segments import SqlSegmentStore

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SESSION = SessionId("call-1")
POLICY = DrainPolicy(batch_size=10, poll_seconds=0.01, retry_max_seconds=0.05)


def final(seq: int, session_id: SessionId = SESSION) -> Segment:
    return Segment(session_id, seq, f"final {seq}", T0)


@pytest_asyncio.fixture
async def segments(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SegmentStore]:
    # Not in tmp_path, the tests' spool: a drainer quarantines the spool's stray files, and took
    # the database's own (seg.db, its -wal and -shm) from under the store when it lived there.
    database = tmp_path_factory.mktemp("segments") / "seg.db"
    store = await backends.open_segment_store(f"sqlite:///{database}")
    yield store
    await store.aclose()


@pytest.fixture
def partials() -> MemoryPartialStore:
    return MemoryPartialStore(ttl_seconds=300)


async def written(spool_dir: Path, *items: SessionOpened | Partial | Segment) -> Path:
    """A sealed stream holding ``items``."""
    writer = SpoolWriter(spool_dir, segment_bytes=300, max_bytes=1 << 20)
    writer.start()
    for item in items:
        if isinstance(item, Segment):
            await writer.append(item)
        else:
            writer.append_nowait(item)
    await writer.close()
    return writer.stream


async def drain(drainer: Drainer, *, deadline: float = 5.0) -> None:
    drainer.stop(deadline)
    await asyncio.wait_for(drainer.run(), 10.0)


async def test_a_drained_stream_is_stored_and_removed(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    stream = await written(
        tmp_path,
        SessionOpened(SESSION, "alice", T0),
        Partial(SESSION, 1, "fin", T0),
        *(final(seq) for seq in range(1, 31)),
        Partial(SESSION, 31, "next", T0),
    )
    await drain(Drainer(tmp_path, partials=partials, segments=segments, policy=POLICY))
    stored = await segments.segments(SESSION)
    assert [(s.seq, s.text) for s in stored] == [(n, f"final {n}") for n in range(1, 31)]
    assert await partials.last_seq(SESSION) == 30
    current = await partials.current_partial(SESSION)
    assert current is not None
    assert (current.seq, current.text) == (31, "next")
    assert not stream.exists()


async def test_a_replay_after_a_lost_acknowledgement_stores_nothing_twice(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    stream = await written(tmp_path, *(final(seq) for seq in range(1, 6)))
    copy = tmp_path.parent / "copy"
    import shutil

    shutil.copytree(stream, copy)
    await drain(Drainer(tmp_path, partials=partials, segments=segments, policy=POLICY))
    shutil.copytree(copy, stream)
    await drain(Drainer(tmp_path, partials=partials, segments=segments, policy=POLICY))
    assert [s.seq for s in await segments.segments(SESSION)] == [1, 2, 3, 4, 5]


class FlakySegments:
    """A real SQLite store whose first ``failures`` batch writes fail (a database outage)."""

    def __init__(self, inner: SegmentStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.last_failure = asyncio.Event()

    async def add_segments(
        self,
        batch: Sequence[Segment],
        *,
        users: Mapping[SessionId, str | None],
        languages: Mapping[SessionId, str] | None = None,
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            if self.failures == 0:
                self.last_failure.set()
            raise StorageError("database is down")
        await self.inner.add_segments(batch, users=users, languages=languages)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_failing_segment_store_is_retried_and_nothing_is_acknowledged_before(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    stream = await written(tmp_path, *(final(seq) for seq in range(1, 4)))
    flaky = FlakySegments(segments, failures=4)
    retries = metrics.PERSISTER_RETRIES.labels("segments")._value.get()
    drainer = Drainer(tmp_path, partials=partials, segments=flaky, policy=POLICY)  # type: ignore[arg-type]
    task = asyncio.create_task(drainer.run())
    try:
        await asyncio.wait_for(flaky.last_failure.wait(), 10.0)
        assert spool.read_ack(stream).records == 0
    finally:
        drainer.stop(5.0)
        await task
    assert metrics.PERSISTER_RETRIES.labels("segments")._value.get() - retries == 4
    assert [s.seq for s in await segments.segments(SESSION)] == [1, 2, 3]


class DownPartials(MemoryPartialStore):
    """A partial store that refuses every write (Redis is down)."""

    async def write_batch(
        self, partials: Sequence[Partial], commits: Mapping[SessionId, int]
    ) -> None:
        raise StorageError("redis is down")


async def test_a_partial_store_outage_does_not_hold_back_finals(
    tmp_path: Path, segments: SqlSegmentStore
) -> None:
    stream = await written(tmp_path, Partial(SESSION, 1, "a", T0), final(1), final(2))
    down = DownPartials(ttl_seconds=300)
    # With the partial store down the drainer never catches up: it stops at its deadline.
    await drain(Drainer(tmp_path, partials=down, segments=segments, policy=POLICY), deadline=0.3)
    assert [s.seq for s in await segments.segments(SESSION)] == [1, 2]
    assert not stream.exists()


async def test_an_embedded_drainer_leaves_the_live_stream_of_another_gateway_alone(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    other = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 20)
    other.start()
    mine = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 20)
    mine.start()
    try:
        await other.append(final(1, SessionId("theirs")))
        await mine.append(final(1, SessionId("mine")))
        await mine.close()
        embedded = Drainer(
            tmp_path, partials=partials, segments=segments, policy=POLICY, own_stream=mine.stream
        )
        await drain(embedded)
        assert await segments.last_seq(SessionId("mine")) == 1
        assert await segments.last_seq(SessionId("theirs")) == 0
        assert other.stream.exists()
    finally:
        await other.close()
    # Sealed now (its gateway stopped or crashed): the next embedded drainer adopts it.
    await drain(
        Drainer(
            tmp_path,
            partials=partials,
            segments=segments,
            policy=POLICY,
            own_stream=tmp_path / "another",
        )
    )
    assert await segments.last_seq(SessionId("theirs")) == 1
    assert not other.stream.exists()


async def test_a_drainer_waits_for_a_final_to_be_acknowledged(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 20)
    writer.start()
    drainer = Drainer(
        tmp_path, partials=partials, segments=segments, policy=POLICY, own_stream=writer.stream
    )
    task = asyncio.create_task(drainer.run())
    try:
        position = await writer.append(final(1))
        drainer.wake()
        assert await drainer.wait_drained(writer.stream, position, within=5.0)
        assert await segments.last_seq(SESSION) == 1
        assert await partials.last_seq(SESSION) == 1
    finally:
        await writer.close()
        drainer.stop(5.0)
        await task


async def test_a_stopped_sidecar_drainer_stores_what_a_live_writer_appends_until_it_seals(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    # A pod's containers get SIGTERM together; the gateway still spools its last finals after.
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 20)
    writer.start()
    sidecar = Drainer(tmp_path, partials=partials, segments=segments, policy=POLICY)
    task = asyncio.create_task(sidecar.run())
    try:
        await writer.append(final(1))
        sidecar.stop(10.0)
        await asyncio.sleep(0.2)  # many rounds: caught up, but the writer is alive
        assert not task.done()
        await writer.append(final(2))
    finally:
        await writer.close()
    await asyncio.wait_for(task, 5.0)
    assert [s.seq for s in await segments.segments(SESSION)] == [1, 2]
    assert not writer.stream.exists()


async def test_a_stopped_drainer_gives_up_on_a_live_writer_at_its_deadline(
    tmp_path: Path, partials: MemoryPartialStore, segments: SqlSegmentStore
) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 20)
    writer.start()
    try:
        await writer.append(final(1))
        sidecar = Drainer(tmp_path, partials=partials, segments=segments, policy=POLICY)
        await drain(sidecar, deadline=0.3)
        assert await segments.last_seq(SESSION) == 1
        assert writer.stream.exists()
    finally:
        await writer.close()


class CounterlessPartials(MemoryPartialStore):
    """A partial store whose counter cannot be read (Redis is down)."""

    async def last_seq(self, session_id: SessionId) -> int:
        raise StorageError("redis is down")


async def test_numbering_continues_without_the_partial_store_counter(
    segments: SqlSegmentStore,
) -> None:
    await segments.add_segments([final(1), final(2)], users={})
    index = resuming.SeqIndex()
    down = CounterlessPartials(ttl_seconds=300)
    assert await resuming.next_seq(SESSION, index, partials=down, segments=segments) == 3
    index.note(SESSION, 5)
    assert await resuming.next_seq(SESSION, index, partials=down, segments=segments) == 6
