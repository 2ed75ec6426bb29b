"""``language`` (TranscriptionSession ``spec.language``, ``EARSHOT_LANGUAGE``): what it does.

Neither engine can be steered to a language: the tests at the end show it on the engines' own
libraries. So the value is a declaration: one the engine cannot recognise is refused (here, the
CRD and the operator: tests/e2e/test_session_fields.py), and a declared one is stored as the
session's ``sessions.language`` (NULL for ``auto``), through the spool and the persister like the
user id. The gateways store it per session: tests/integration/test_session_gateway.py (a
dedicated gateway), test_pool_gateway.py (each pooled session its own) and test_session_pod.py
(from the operator's spec to MariaDB).
"""

from __future__ import annotations

import contextlib
import inspect
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sherpa_onnx

from earshot.engines import tiny_kyutai
from earshot.events import Segment, SessionId
from earshot.persistence import journaling, records
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore

T0 = datetime(2026, 12, 3, 4, 5, 6, tzinfo=UTC)


async def _one_session(settings: Settings, session: str, language: str | None) -> None:
    """A gateway's journal (embedded persister) keeps one final of a session declared so."""
    segments = await backends.open_segment_store(settings.resolved_segments_url())
    try:
        async with journaling.open_journal(
            settings, partials=MemoryPartialStore(ttl_seconds=60), segments=segments
        ) as journal:
            seq = await journal.open_session(SessionId(session), "alice", language)
            await journal.final(Segment(SessionId(session), seq, "hello", T0))
            await journal.close_session(SessionId(session), last_seq=seq)
    finally:
        await segments.aclose()


def _languages(path: Path) -> list[tuple[str, str | None]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT id, language FROM sessions ORDER BY id").fetchall()


@pytest.mark.parametrize(
    ("engine", "language", "declared"),
    [("paraformer", "zh", "zh"), ("kyutai", "fr", "fr"), ("paraformer", "auto", None)],
)
def test_the_settings_declare_a_language_except_auto(
    engine: str, language: str, declared: str | None
) -> None:
    settings = Settings(engine=engine, language=language)
    assert settings.declared_language() == declared


async def test_a_language_declared_on_a_later_connection_fills_in_a_row_without_one(
    tmp_path: Path,
) -> None:
    settings = Settings(
        cache_dir=tmp_path,
        spool_dir=tmp_path / "spool",
        segments_url=f"sqlite:///{tmp_path / 'seg.db'}",
    )
    await _one_session(settings, "call-1", None)
    assert _languages(tmp_path / "seg.db") == [("call-1", None)]
    await _one_session(settings, "call-1", "en")
    await _one_session(settings, "call-1", "zh")
    assert _languages(tmp_path / "seg.db") == [("call-1", "en")]  # a stored value stays


def test_the_spool_carries_the_language_and_refuses_one_longer_than_its_column() -> None:
    opened = records.SessionOpened(SessionId("call-1"), "alice", T0, language="fr")
    encoded = records.encode(opened)
    assert records.decode(encoded, 0) == (opened, len(encoded))
    undeclared = records.SessionOpened(SessionId("call-1"), None, T0)
    assert b'"l"' not in records.encode(undeclared)  # the format older readers know
    with pytest.raises(records.OutOfRange, match="language is 17 characters long"):
        records.encode(records.SessionOpened(SessionId("c"), None, T0, language="x" * 17))


async def test_an_older_sessions_table_gets_the_language_column_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, user_id VARCHAR(64),"
            " created_at DATETIME)"
        )
        db.execute("INSERT INTO sessions VALUES ('old', 'bob', '2026-12-03 04:05:06')")
    store = await backends.open_segment_store(f"sqlite:///{path}")
    try:
        await store.add_segments([], users={}, languages={SessionId("new"): "en"})
        assert await store.session(SessionId("old")) is not None
    finally:
        await store.aclose()
    assert _languages(path) == [("new", "en"), ("old", None)]


# --- why it is a declaration: neither engine takes a language ------------------------------


def test_sherpa_onnx_streaming_paraformer_takes_no_language() -> None:
    parameters = inspect.signature(sherpa_onnx.OnlineRecognizer.from_paraformer).parameters
    assert {"tokens", "encoder", "decoder"} <= set(parameters)
    assert [name for name in parameters if "lang" in name] == []


def test_kyutai_stt_1b_en_fr_has_no_condition_a_language_could_be_given_through() -> None:
    # moshi builds one conditioner per entry of the checkpoint's "conditioners": the published
    # stt-1b-en_fr has none, so its LM takes audio tokens and nothing else.
    assert tiny_kyutai.ONE_B.lm["conditioners"] == {}
    lm = tiny_kyutai.random_model(tiny_kyutai.TINY).lm
    assert lm.condition_provider is not None
    assert len(lm.condition_provider.conditioners) == 0
