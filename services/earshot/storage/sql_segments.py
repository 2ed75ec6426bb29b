"""The SQL segment store: the ``sessions`` and ``segments`` tables of PROTOCOLS.md §1.

SQLAlchemy async Core on SQLite (aiosqlite, the embedded default) or MySQL/MariaDB (aiomysql).
Tables are created when missing; tables the older telephony server created are migrated by adding
the nullable columns it lacks (``sessions.language``, and Talk calls' ``segments.speaker``,
``started_at``, ``ended_at``, see :func:`_migrate`): the older server's rows and statements stay
valid, its clients read on.

Writes are idempotent so that the persister may replay its spool: a segment's id is derived from
(session, seq) and rows are inserted with ``INSERT IGNORE`` / ``INSERT OR IGNORE``, so the first
write of a (session, seq) wins. Times are stored as naive UTC ``DATETIME`` (whole seconds on MySQL)
and read back as aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    CHAR,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from earshot import metrics
from earshot.events import Segment, SessionId
from earshot.storage.ports import StorageError

log = logging.getLogger(__name__)

# Fixed forever (it is uuid5(NAMESPACE_DNS, "segments.earshot.dev")): ids written by earlier
# releases must stay reproducible.
SEGMENT_ID_NAMESPACE = uuid.UUID("63ac9d93-7aeb-5f84-9d68-b79cf4a839b8")
#: Looks at the schema before a failure to create it is final (0.1 s, then doubling: 3.1 s in all).
_SCHEMA_ATTEMPTS = 6

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=True),
    Column("created_at", DateTime, nullable=False),
    # The language the session was declared to speak (TranscriptionSession spec.language); NULL:
    # not declared ("auto"), as for every row of the older server.
    Column("language", String(16), nullable=True),
    # A server started without configuration defaults to latin1, which cannot hold Chinese text.
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

segments = Table(
    "segments",
    metadata,
    Column("id", CHAR(36), primary_key=True),
    Column("session_id", String(64), ForeignKey("sessions.id"), nullable=False),
    Column("segment_seq", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    # Talk calls: who spoke and when, to the millisecond (NULL for telephony segments).
    Column("speaker", String(64), nullable=True),
    Column("started_at", DateTime().with_variant(mysql.DATETIME(fsp=3), "mysql"), nullable=True),
    Column("ended_at", DateTime().with_variant(mysql.DATETIME(fsp=3), "mysql"), nullable=True),
    Index("idx_session_seq", "session_id", "segment_seq"),
    UniqueConstraint("session_id", "segment_seq", name="uq_segments_session_seq"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)


def segment_id(session_id: SessionId, seq: int) -> str:
    """The deterministic id of a session's segment ``seq``: uuid5 of ``"{session_id}:{seq}"``."""
    return str(uuid.uuid5(SEGMENT_ID_NAMESPACE, f"{session_id}:{seq}"))


def _segment_row(segment: Segment) -> dict[str, object]:
    return {
        "id": segment_id(segment.session_id, segment.seq),
        "session_id": segment.session_id,
        "segment_seq": segment.seq,
        "content": segment.text,
        "created_at": _naive_utc(segment.created_at),
        "speaker": segment.speaker,
        "started_at": None if segment.started_at is None else _naive_utc(segment.started_at),
        "ended_at": None if segment.ended_at is None else _naive_utc(segment.ended_at),
    }


#: The columns added since the older telephony server's schema, per table, with their DDL per
#: dialect.
ADDED_COLUMNS: dict[str, dict[str, dict[str, str]]] = {
    "sessions": {"language": {"mysql": "VARCHAR(16) NULL", "sqlite": "VARCHAR(16)"}},
    "segments": {
        "speaker": {"mysql": "VARCHAR(64) NULL", "sqlite": "VARCHAR(64)"},
        "started_at": {"mysql": "DATETIME(3) NULL", "sqlite": "DATETIME"},
        "ended_at": {"mysql": "DATETIME(3) NULL", "sqlite": "DATETIME"},
    },
}


def _migrate(conn: Connection) -> list[str]:
    """Add the columns the tables lack (nullable: existing rows and inserts stay valid); returns
    the ``table.column`` names added."""
    dialect = "sqlite" if conn.dialect.name == "sqlite" else "mysql"
    added = []
    for table, columns in ADDED_COLUMNS.items():
        present = {column["name"] for column in inspect(conn).get_columns(table)}
        for name in columns:
            if name not in present:
                conn.execute(
                    text(f"ALTER TABLE {table} ADD COLUMN {name} {columns[name][dialect]}")
                )
                added.append(f"{table}.{name}")
    return added


def _naive_utc(moment: datetime) -> datetime:
    """A time as the DATETIME columns hold it; a naive time is taken as UTC already."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway read while the persister writes; the busy timeout rides out the short
    # write locks of another process instead of failing at once.
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=5000", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_pre_ping=True)
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        return engine
    # MySQL closes idle connections after wait_timeout (8 h by default): recycle well before.
    return create_async_engine(url, pool_pre_ping=True, pool_recycle=3600)


def _cause(exc: BaseException) -> str:
    """The first line of a database error: the driver's own message.

    SQLAlchemy adds lines for the statement, its parameters (a transcript's text) and a link to its
    docs; a store error is one line in a log and on the command line.
    """
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class SqlSegmentStore:
    """Sessions and segments in SQLite or MySQL/MariaDB."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine whose database already has the tables; prefer :meth:`open`."""
        self._engine = engine
        self._where = engine.url.render_as_string(hide_password=True)
        ignore = {"mysql": "IGNORE", "mariadb": "IGNORE", "sqlite": "OR IGNORE"}
        prefix = ignore.get(engine.dialect.name)
        if prefix is None:
            raise ValueError(f"no insert-or-ignore for SQL dialect {engine.dialect.name!r}")
        self._insert_session = insert(sessions).prefix_with(prefix)
        self._insert_segment = insert(segments).prefix_with(prefix)

    @classmethod
    async def open(cls, url: str | URL) -> SqlSegmentStore:
        """Connect to an async database URL and create the tables that are missing.

        Args:
            url: ``sqlite+aiosqlite:///path`` or ``mysql+aiomysql://user:pass@host:port/db``.

        Raises:
            StorageError: when the database cannot be reached or the tables cannot be created.
        """
        store = cls(_create_engine(make_url(url)))
        try:
            await store._create_schema()
        except BaseException:
            await store.aclose()
            raise
        return store

    async def _create_schema(self) -> None:
        # Several processes (a pool's gateways and persisters) may race to create the tables on a
        # new database: a loser ("table already exists") finds them on a later look, once the
        # winner's DDL is done.
        for attempt in range(1, _SCHEMA_ATTEMPTS + 1):
            try:
                async with self._engine.begin() as conn:
                    await conn.run_sync(metadata.create_all, checkfirst=True)
                    await conn.run_sync(_migrate)
                return
            except SQLAlchemyError as exc:
                if attempt == _SCHEMA_ATTEMPTS:
                    message = (
                        f"segment store at {self._where} cannot be opened (connect, create tables)"
                    )
                    raise StorageError(f"{message}: {_cause(exc)}") from exc
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(f"segment store at {self._where} failed: {_cause(exc)}") from exc

    async def ensure_session(self, session_id: SessionId, user_id: str | None) -> None:
        """Create the session's row if missing; fill in its user when it was stored without one."""
        async with self._transaction() as conn:
            await conn.execute(self._session_row(session_id, user_id))
            if user_id is not None:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c.user_id.is_(None))
                    .values(user_id=user_id)
                )

    async def add_segment(self, segment: Segment) -> None:
        """Store a segment (and its session's row if missing); a stored (session, seq) is kept."""
        await self.add_segments([segment], users={})

    async def add_segments(
        self,
        batch: Sequence[Segment],
        *,
        users: Mapping[SessionId, str | None],
        languages: Mapping[SessionId, str] | None = None,
    ) -> None:
        """Store sessions' rows and segments in one transaction; stored rows are kept.

        Every session of ``batch`` gets its row (in the same transaction, so that MySQL's
        ``INSERT IGNORE`` cannot swallow a foreign-key failure); ``users`` (session -> user id) adds
        rows with their user ids and fills in the user of rows stored without one; ``languages``
        (session -> declared language) likewise fills in ``sessions.language``.
        """
        now = datetime.now(UTC).replace(tzinfo=None)
        languages = languages or {}
        rows = {segment.session_id: None for segment in batch} | dict(users)
        rows |= {session: rows.get(session) for session in languages}
        async with self._transaction() as conn:
            if rows:
                await conn.execute(
                    self._insert_session,
                    [
                        {"id": s, "user_id": u, "created_at": now, "language": languages.get(s)}
                        for s, u in rows.items()
                    ],
                )
            for column, values in (("user_id", users), ("language", languages)):
                await self._fill_in(conn, column, values)
            if batch:
                await conn.execute(self._insert_segment, [_segment_row(s) for s in batch])
                await self._report_conflicts(conn, batch)

    async def _fill_in(
        self, conn: AsyncConnection, column: str, values: Mapping[SessionId, str | None]
    ) -> None:
        """Set ``column`` of the sessions stored without a value (a value stored stays)."""
        for session_id, value in values.items():
            if value is not None:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.id == session_id, sessions.c[column].is_(None))
                    .values({column: value})
                )

    async def _report_conflicts(self, conn: AsyncConnection, batch: Sequence[Segment]) -> None:
        """Log and count each final whose number is stored with another text: a replay offers
        the same text again, but two writers numbering one session alike lose one text here."""
        # By (session, seq), the unique key: rows the older server wrote have other ids.
        offered = {(s.session_id, s.seq): s for s in batch}
        key = tuple_(segments.c.session_id, segments.c.segment_seq)
        query = select(segments.c.session_id, segments.c.segment_seq, segments.c.content)
        for session_id, seq, content in (await conn.execute(query.where(key.in_(offered)))).all():
            segment = offered[(session_id, seq)]
            if content != segment.text:
                metrics.SEGMENT_CONFLICTS.inc()
                log.error(
                    "session %s: final %d is stored as %r; a second text for it, %r, is dropped "
                    "(two writers numbered this session alike)",
                    segment.session_id,
                    segment.seq,
                    content[:80],
                    segment.text[:80],
                )

    def _session_row(self, session_id: SessionId, user_id: str | None) -> Insert:
        now = datetime.now(UTC).replace(tzinfo=None)
        return self._insert_session.values(id=session_id, user_id=user_id, created_at=now)

    async def last_seq(self, session_id: SessionId) -> int:
        """The highest stored segment number of the session, 0 when none."""
        query = select(func.max(segments.c.segment_seq)).where(segments.c.session_id == session_id)
        async with self._transaction() as conn:
            highest = (await conn.execute(query)).scalar()
        return int(highest or 0)

    async def segments(self, session_id: SessionId) -> list[Segment]:
        """Every stored segment of the session, in sequence order."""
        c = segments.c
        query = (
            select(c.segment_seq, c.content, c.created_at, c.speaker, c.started_at, c.ended_at)
            .where(c.session_id == session_id)
            .order_by(c.segment_seq)
        )
        async with self._transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Segment(
                session_id=session_id,
                seq=seq,
                text=content,
                created_at=created_at.replace(tzinfo=UTC),
                speaker=speaker,
                started_at=_aware(started),
                ended_at=_aware(ended),
            )
            for seq, content, created_at, speaker, started, ended in rows
        ]

    async def session(self, session_id: SessionId) -> tuple[str | None, datetime] | None:
        """The session's user and creation time, or None when it is not stored."""
        query = select(sessions.c.user_id, sessions.c.created_at).where(sessions.c.id == session_id)
        async with self._transaction() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (row[0], row[1].replace(tzinfo=UTC))

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()
