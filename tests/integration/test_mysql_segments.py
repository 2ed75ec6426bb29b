"""The SQL segment store against a real, private MariaDB."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from earshot import metrics
from earshot.events import Segment, SessionId
from earshot.storage import backends, sql_segments
from earshot.storage.ports import SegmentStore, StorageError
from tests.servers import MariaDbServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SESSION = SessionId("call-1")
# DATETIME keeps whole seconds: test times have none.
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# What the older telephony server created: used as is, never altered.
OLDER_SERVER_DDL = [
    """CREATE TABLE sessions (
        id VARCHAR(64) PRIMARY KEY,
        user_id VARCHAR(64) NULL,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE segments (
        id CHAR(36) PRIMARY KEY,
        session_id VARCHAR(64),
        segment_seq INT,
        content TEXT,
        created_at DATETIME DEFAULT CURRENT_TIMESTAMP,
        INDEX idx_session_seq (session_id, segment_seq),
        UNIQUE KEY uniq_session_seq (session_id, segment_seq),
        FOREIGN KEY (session_id) REFERENCES sessions(id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    "INSERT INTO sessions (id, user_id) VALUES ('call-1', 'alice')",
    """INSERT INTO segments (id, session_id, segment_seq, content, created_at) VALUES
        ('0b9f2a44-7c1e-4f25-9a59-3f0d4f1c2e01', 'call-1', 1, 'old one', '2026-01-02 03:04:06'),
        ('6a1d3c55-8d2f-4a36-8b6a-4e1e5a2d3f02', 'call-1', 2, 'old two', '2026-01-02 03:04:07')""",
]


def segment(seq: int, content: str, session_id: SessionId = SESSION) -> Segment:
    return Segment(
        session_id=session_id, seq=seq, text=content, created_at=T0 + timedelta(seconds=seq)
    )


@pytest_asyncio.fixture
async def db(mysql_url: str) -> AsyncIterator[AsyncEngine]:
    """A second, independent connection to the test's database, to look at what was stored."""
    engine = create_async_engine(mysql_url.replace("mysql://", "mysql+aiomysql://", 1))
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture
async def store(mysql_url: str) -> AsyncIterator[SegmentStore]:
    opened = await backends.open_segment_store(mysql_url)
    yield opened
    await opened.aclose()


async def rows(engine: AsyncEngine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(query), params)]


async def columns(engine: AsyncEngine, table: str) -> dict[str, tuple[Any, ...]]:
    found = await rows(
        engine,
        "SELECT column_name, column_type, is_nullable, column_key FROM information_schema.columns"
        " WHERE table_schema = DATABASE() AND table_name = :table",
        table=table,
    )
    return {name: tuple(rest) for name, *rest in found}


async def index_columns(engine: AsyncEngine, table: str) -> dict[str, tuple[list[str], bool]]:
    found = await rows(
        engine,
        "SELECT index_name, column_name, non_unique FROM information_schema.statistics"
        " WHERE table_schema = DATABASE() AND table_name = :table"
        " ORDER BY index_name, seq_in_index",
        table=table,
    )
    indexes: dict[str, tuple[list[str], bool]] = {}
    for name, column, non_unique in found:
        indexes.setdefault(name, ([], not non_unique))[0].append(column)
    return indexes


async def show_create(engine: AsyncEngine, table: str) -> str:
    ((_, ddl),) = await rows(engine, f"SHOW CREATE TABLE {table}")
    return str(ddl)


async def test_tables_have_the_columns_of_the_older_server(
    store: SegmentStore, db: AsyncEngine
) -> None:
    assert await columns(db, "sessions") == {
        "id": ("varchar(64)", "NO", "PRI"),
        "user_id": ("varchar(64)", "YES", ""),
        "created_at": ("datetime", "NO", ""),
        "language": ("varchar(16)", "YES", ""),
    }
    segment_columns = await columns(db, "segments")
    assert {name: spec[:2] for name, spec in segment_columns.items()} == {
        "id": ("char(36)", "NO"),
        "session_id": ("varchar(64)", "NO"),
        "segment_seq": ("int(11)", "NO"),
        "content": ("text", "NO"),
        "created_at": ("datetime", "NO"),
        "speaker": ("varchar(64)", "YES"),
        "started_at": ("datetime(3)", "YES"),
        "ended_at": ("datetime(3)", "YES"),
    }
    assert segment_columns["id"][2] == "PRI"


async def test_segments_have_the_session_seq_index_a_unique_key_and_a_foreign_key(
    store: SegmentStore, db: AsyncEngine
) -> None:
    indexes = await index_columns(db, "segments")
    assert indexes["idx_session_seq"] == (["session_id", "segment_seq"], False)
    unique = [cols for name, (cols, unique) in indexes.items() if unique and name != "PRIMARY"]
    assert unique == [["session_id", "segment_seq"]]
    assert await rows(
        db,
        "SELECT column_name, referenced_table_name, referenced_column_name"
        " FROM information_schema.key_column_usage WHERE table_schema = DATABASE()"
        " AND table_name = 'segments' AND referenced_table_name IS NOT NULL",
    ) == [("session_id", "sessions", "id")]
    assert "utf8mb4" in await show_create(db, "segments")


async def test_repeated_segment_is_stored_once_with_its_first_text(
    store: SegmentStore, db: AsyncEngine
) -> None:
    await store.add_segment(segment(1, "first"))
    await store.add_segment(segment(1, "first"))
    await store.add_segment(segment(1, "replayed"))

    assert await rows(db, "SELECT segment_seq, content FROM segments") == [(1, "first")]
    assert await store.segments(SESSION) == [segment(1, "first")]


async def test_a_second_text_for_a_number_the_older_server_stored_is_logged_and_counted(
    mysql_url: str, db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with db.begin() as conn:
        for statement in OLDER_SERVER_DDL:
            await conn.execute(text(statement))
    store = await backends.open_segment_store(mysql_url)
    try:
        conflicts = metrics.SEGMENT_CONFLICTS._value.get()
        await store.add_segments([segment(2, "old two"), segment(3, "three")], users={})
        assert metrics.SEGMENT_CONFLICTS._value.get() == conflicts
        await store.add_segments([segment(1, "not the old one")], users={})
        assert metrics.SEGMENT_CONFLICTS._value.get() == conflicts + 1
        assert [s.text for s in await store.segments(SESSION)] == ["old one", "old two", "three"]
    finally:
        await store.aclose()
    assert "final 1 is stored as 'old one'" in caplog.text


async def test_segments_come_back_in_order_with_unicode_text_and_last_seq(
    store: SegmentStore,
) -> None:
    assert await store.last_seq(SESSION) == 0
    texts = {3: "三", 1: "你好 world 👋", 2: "deux"}
    for seq, content in texts.items():
        await store.add_segment(segment(seq, content))

    assert await store.segments(SESSION) == [segment(seq, texts[seq]) for seq in (1, 2, 3)]
    assert await store.last_seq(SESSION) == 3
    assert await store.last_seq(SessionId("other")) == 0


async def test_ensure_session_is_idempotent_and_fills_a_missing_user(
    store: SegmentStore, db: AsyncEngine
) -> None:
    await store.add_segment(segment(1, "before the session was announced"))
    await store.ensure_session(SESSION, "alice")
    await store.ensure_session(SESSION, "bob")
    await store.ensure_session(SessionId("call-2"), None)
    assert await rows(db, "SELECT id, user_id FROM sessions ORDER BY id") == [
        ("call-1", "alice"),
        ("call-2", None),
    ]


async def test_segment_ids_are_deterministic_across_stores(mysql_url: str, db: AsyncEngine) -> None:
    for _ in range(2):
        store = await backends.open_segment_store(mysql_url)
        await store.add_segment(segment(5, "same"))
        await store.aclose()

    ((stored_id,),) = await rows(db, "SELECT id FROM segments")
    assert stored_id == str(uuid.uuid5(sql_segments.SEGMENT_ID_NAMESPACE, "call-1:5"))


async def test_tables_of_the_older_server_gain_only_nullable_columns(
    mysql_url: str, db: AsyncEngine
) -> None:
    async with db.begin() as conn:
        for statement in OLDER_SERVER_DDL:
            await conn.execute(text(statement))
    sessions_before = await columns(db, "sessions")
    segments_before = await columns(db, "segments")

    store = await backends.open_segment_store(mysql_url.replace("mysql://", "mysql+pymysql://"))
    try:
        assert await store.last_seq(SESSION) == 2
        await store.add_segment(segment(3, "new three"))
        await store.add_segment(segment(2, "replayed two"))
        spoken = T0 + timedelta(seconds=9, milliseconds=250)
        talk = Segment(
            SessionId("talk:r00m:20260102T030405"), 1, "hello", T0,
            speaker="alice", started_at=spoken, ended_at=spoken + timedelta(milliseconds=1500),
        )  # fmt: skip
        await store.add_segment(talk)
        stored = [(s.seq, s.text, s.speaker) for s in await store.segments(SESSION)]
        assert await store.segments(talk.session_id) == [talk]
        # The older server's statements still work on the migrated tables.
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO segments (id, session_id, segment_seq, content, created_at)"
                    " VALUES ('7b2e4d66-9e30-4b47-9c7b-5f2f6b3e4a03', 'call-1', 4, 'old four',"
                    " '2026-01-02 03:04:09')"
                )
            )
        old_read = await rows(
            db, "SELECT segment_seq, content FROM segments WHERE session_id = 'call-1'"
            " ORDER BY segment_seq"
        )  # fmt: skip
    finally:
        await store.aclose()

    assert stored == [(1, "old one", None), (2, "old two", None), (3, "new three", None)]
    assert old_read == [(1, "old one"), (2, "old two"), (3, "new three"), (4, "old four")]
    sessions_after = await columns(db, "sessions")
    assert {k: v for k, v in sessions_after.items() if k in sessions_before} == sessions_before
    assert {k: v[:2] for k, v in sessions_after.items() if k not in sessions_before} == {
        "language": ("varchar(16)", "YES")
    }
    after = await columns(db, "segments")
    assert {k: v for k, v in after.items() if k in segments_before} == segments_before
    assert {k: v[:2] for k, v in after.items() if k not in segments_before} == {
        "speaker": ("varchar(64)", "YES"),
        "started_at": ("datetime(3)", "YES"),
        "ended_at": ("datetime(3)", "YES"),
    }


async def test_stopped_server_raises_storage_error_and_a_restart_recovers(
    store: SegmentStore, mariadb_server: MariaDbServer
) -> None:
    await store.add_segment(segment(1, "kept"))
    mariadb_server.stop()

    with pytest.raises(StorageError, match="segment store at mysql"):
        await store.add_segment(segment(2, "refused"))

    mariadb_server.start()
    await store.add_segment(segment(2, "after restart"))
    assert [s.text for s in await store.segments(SESSION)] == ["kept", "after restart"]


async def test_unreachable_database_fails_to_open_with_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot be opened") as caught:
        await backends.open_segment_store(f"mysql://root:secret@127.0.0.1:{free_port()}/nowhere")
    assert "secret" not in str(caught.value)


async def test_stores_opened_at_once_on_a_new_database_all_open(mysql_url: str) -> None:
    # A pool's gateways and persisters start together against a new MariaDB: each creates the
    # tables it misses, and the losers of that race ("Table 'segments' already exists") must look
    # again, not exit (a pod restart in the cluster tests, a refused start in test_session_pod).
    opened = await asyncio.gather(
        *(backends.open_segment_store(mysql_url) for _ in range(8)), return_exceptions=True
    )
    try:
        assert [o for o in opened if isinstance(o, BaseException)] == []
    finally:
        for store in opened:
            if not isinstance(store, BaseException):
                await store.aclose()
