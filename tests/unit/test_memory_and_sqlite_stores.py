"""The storage backends that need no server: partials in memory, segments in SQLite."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.storage import backends, sql_segments
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import SegmentStore
from earshot.storage.redis_partials import RedisPartialStore

pytestmark = pytest.mark.asyncio

SESSION = SessionId("call-1")
OTHER = SessionId("call-2")
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def partial(seq: int, text: str, session_id: SessionId = SESSION) -> Partial:
    return Partial(session_id=session_id, seq=seq, text=text, at=T0)


def segment(seq: int, text: str, session_id: SessionId = SESSION) -> Segment:
    return Segment(
        session_id=session_id, seq=seq, text=text, created_at=T0 + timedelta(seconds=seq)
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def memory(clock: FakeClock) -> MemoryPartialStore:
    return MemoryPartialStore(ttl_seconds=300, clock=clock)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "not" / "yet" / "there" / "earshot.sqlite3"


@pytest_asyncio.fixture
async def sqlite_store(sqlite_path: Path) -> AsyncIterator[SegmentStore]:
    store = await backends.open_segment_store(f"sqlite:///{sqlite_path}")
    yield store
    await store.aclose()


async def test_memory_store_keeps_the_current_partial_until_a_final_commits_it(
    memory: MemoryPartialStore,
) -> None:
    await memory.put_partial(partial(1, "hel"))
    await memory.put_partial(partial(1, "hello"))
    assert await memory.current_partial(SESSION) == partial(1, "hello")
    assert await memory.last_seq(SESSION) == 0

    await memory.commit_final(SESSION, 1)

    assert await memory.current_partial(SESSION) is None
    assert await memory.last_seq(SESSION) == 1
    assert await memory.last_seq(OTHER) == 0


async def test_memory_store_counter_never_decreases(memory: MemoryPartialStore) -> None:
    await memory.commit_final(SESSION, 5)
    await memory.commit_final(SESSION, 3)
    assert await memory.last_seq(SESSION) == 5


async def test_memory_store_replayed_commit_keeps_the_partial_of_a_later_segment(
    memory: MemoryPartialStore,
) -> None:
    await memory.commit_final(SESSION, 1)
    await memory.put_partial(partial(2, "next"))
    await memory.commit_final(SESSION, 1)
    assert await memory.current_partial(SESSION) == partial(2, "next")


async def test_memory_store_partial_expires_after_its_ttl_since_the_last_write(
    memory: MemoryPartialStore, clock: FakeClock
) -> None:
    await memory.put_partial(partial(1, "a"))
    clock.now += 200
    await memory.put_partial(partial(1, "ab"))
    clock.now += 200
    assert await memory.current_partial(SESSION) == partial(1, "ab")
    clock.now += 100
    assert await memory.current_partial(SESSION) is None


async def test_sqlite_store_creates_its_directory_and_runs_in_wal_mode(
    sqlite_store: SegmentStore, sqlite_path: Path
) -> None:
    await sqlite_store.add_segment(segment(1, "hello"))
    with sqlite3.connect(sqlite_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        indexes = {row[1] for row in db.execute("PRAGMA index_list(segments)")}
    assert "idx_session_seq" in indexes


async def test_sqlite_store_returns_segments_in_sequence_order(
    sqlite_store: SegmentStore,
) -> None:
    for seq in (3, 1, 2):
        await sqlite_store.add_segment(segment(seq, f"text {seq}"))
    await sqlite_store.add_segment(segment(1, "another session", session_id=OTHER))

    stored = await sqlite_store.segments(SESSION)

    assert stored == [segment(1, "text 1"), segment(2, "text 2"), segment(3, "text 3")]
    assert await sqlite_store.last_seq(SESSION) == 3
    assert await sqlite_store.last_seq(OTHER) == 1
    assert await sqlite_store.last_seq(SessionId("never-seen")) == 0


async def test_sqlite_store_keeps_the_first_write_of_a_repeated_segment(
    sqlite_store: SegmentStore,
) -> None:
    await sqlite_store.add_segment(segment(1, "first"))
    await sqlite_store.add_segment(segment(1, "first"))
    await sqlite_store.add_segment(segment(1, "replayed with other text"))
    assert await sqlite_store.segments(SESSION) == [segment(1, "first")]


async def test_sqlite_store_logs_and_counts_a_second_text_for_a_stored_number(
    sqlite_store: SegmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    conflicts = metrics.SEGMENT_CONFLICTS._value.get()
    await sqlite_store.add_segments([segment(1, "first"), segment(2, "second")], users={})
    # A replay (same texts) is no conflict; another writer's text for number 2 is.
    await sqlite_store.add_segments(
        [segment(1, "first"), segment(2, "other writer"), segment(3, "third")], users={}
    )
    assert metrics.SEGMENT_CONFLICTS._value.get() == conflicts + 1
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == (
        f"session {SESSION}: final 2 is stored as 'second'; a second text for it, 'other writer', "
        "is dropped (two writers numbered this session alike)"
    )
    assert [s.text for s in await sqlite_store.segments(SESSION)] == ["first", "second", "third"]


async def test_sqlite_store_ensure_session_is_idempotent_and_fills_a_missing_user(
    sqlite_store: SegmentStore, sqlite_path: Path
) -> None:
    await sqlite_store.add_segment(segment(1, "hello"))
    await sqlite_store.ensure_session(SESSION, "alice")
    await sqlite_store.ensure_session(SESSION, "bob")
    await sqlite_store.ensure_session(SESSION, None)
    with sqlite3.connect(sqlite_path) as db:
        rows = db.execute("SELECT id, user_id FROM sessions").fetchall()
    assert rows == [("call-1", "alice")]


async def test_sqlite_store_segment_ids_are_uuid5_of_session_and_seq(
    sqlite_store: SegmentStore, sqlite_path: Path
) -> None:
    await sqlite_store.add_segment(segment(7, "hello"))
    with sqlite3.connect(sqlite_path) as db:
        (stored_id,) = db.execute("SELECT id FROM segments").fetchone()
    expected = uuid.uuid5(sql_segments.SEGMENT_ID_NAMESPACE, "call-1:7")
    assert stored_id == str(expected) == sql_segments.segment_id(SESSION, 7)
    assert uuid.UUID(stored_id).version == 5


async def test_sqlite_store_reopens_an_existing_database_with_its_rows(
    sqlite_path: Path,
) -> None:
    first = await backends.open_segment_store(f"sqlite+aiosqlite:///{sqlite_path}")
    await first.add_segment(segment(1, "kept"))
    await first.aclose()

    second = await backends.open_segment_store(f"sqlite:///{sqlite_path}")
    try:
        assert await second.segments(SESSION) == [segment(1, "kept")]
    finally:
        await second.aclose()


async def test_memory_url_opens_the_memory_partial_store() -> None:
    store = backends.open_partial_store("memory://", ttl_seconds=300)
    assert isinstance(store, MemoryPartialStore)
    await store.aclose()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "rediss://u:p@cache.example:6380/2", "unix:///run/r.sock?db=1"]
)
async def test_redis_urls_open_the_redis_store_without_connecting(url: str) -> None:
    store = backends.open_partial_store(url, ttl_seconds=300)
    assert isinstance(store, RedisPartialStore)
    await store.aclose()


@pytest.mark.parametrize("url", ["postgres://u:secret@db/x", "redis://localhost", "just-a-path"])
async def test_segment_store_refuses_unknown_schemes_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match="supported schemes: sqlite://") as caught:
        await backends.open_segment_store(url)
    assert "mysql+pymysql://" in str(caught.value)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["mysql://localhost/db", "http://x", ""])
async def test_partial_store_refuses_unknown_schemes_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match="supported schemes: memory://, redis://, rediss://"):
        backends.open_partial_store(url, ttl_seconds=300)
