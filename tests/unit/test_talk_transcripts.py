"""Talk calls' transcripts: kept through the spool and the persister, read back with the CLI.

Everything is real: the spool, the embedded persister, SQLite, the signaling double with aiortc
peers and the tiny engine; the CLI runs as ``earshot transcripts show``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from earshot.cli.commands import app
from earshot.engines.recognizers import Recognizer
from earshot.events import Segment, SessionId
from earshot.gateways.talk import keeping, messages
from earshot.gateways.talk.hosting import Rooms
from earshot.persistence import records
from earshot.persistence.journaling import Journal
from earshot.settings import Settings
from earshot.storage import backends
from tests.hpb_double import SignalingDouble
from tests.unit.test_talk_caption_latency import recognizer as recognizer
from tests.unit.test_talk_exapp import exapp_for, settings_for
from tests.unit.test_talk_rooms import double as double
from tests.unit.test_talk_rooms import publish, talk_settings, transcripts, until

SPEAKS = messages.IN_CALL | messages.WITH_AUDIO
T0 = datetime(2026, 12, 3, 4, 5, 6, tzinfo=UTC)
OLD_SQLITE = [
    "CREATE TABLE sessions (id VARCHAR(64) PRIMARY KEY, user_id VARCHAR(64), created_at DATETIME)",
    "CREATE TABLE segments (id CHAR(36) PRIMARY KEY, session_id VARCHAR(64) REFERENCES"
    " sessions(id), segment_seq INT, content TEXT, created_at DATETIME,"
    " UNIQUE (session_id, segment_seq))",
    "INSERT INTO sessions VALUES ('call-1', 'alice', '2026-12-03 04:05:06')",
    "INSERT INTO segments VALUES ('a', 'call-1', 1, 'old one', '2026-12-03 04:05:07')",
]


def talk_segment(seq: int, speaker: str) -> Segment:
    began = T0 + timedelta(seconds=seq, milliseconds=125)
    return Segment(
        SessionId("talk:r00m:20261203T040506"),
        seq,
        f"words of {speaker}",
        T0 + timedelta(seconds=seq + 2),
        speaker=speaker,
        started_at=began,
        ended_at=began + timedelta(milliseconds=1750),
    )


def test_a_talk_final_keeps_its_speaker_and_times_in_the_spool() -> None:
    segment = talk_segment(1, "alice")
    decoded = records.decode(records.encode(segment), 0)
    assert decoded is not None
    assert decoded[0] == segment
    telephony = Segment(SessionId("call-1"), 1, "hi", T0)
    assert records.decode(records.encode(telephony), 0) == (
        telephony,
        len(records.encode(telephony)),
    )
    with pytest.raises(records.OutOfRange, match="speaker is 65 characters"):
        records.encode(Segment(SessionId("c"), 1, "x", T0, speaker="s" * 65))


async def test_older_sqlite_tables_are_migrated_and_keep_their_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for statement in OLD_SQLITE:
            db.execute(statement)
    store = await backends.open_segment_store(f"sqlite:///{path}")
    try:
        await store.add_segment(talk_segment(1, "alice"))
        old = await store.segments(SessionId("call-1"))
        talk = await store.segments(talk_segment(1, "alice").session_id)
    finally:
        await store.aclose()
    assert [(s.seq, s.text, s.speaker, s.started_at) for s in old] == [(1, "old one", None, None)]
    assert talk == [talk_segment(1, "alice")]
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO segments (id, session_id, segment_seq, content, created_at)"
                   " VALUES ('b', 'call-1', 2, 'old two', '2026-12-03 04:05:08')")  # fmt: skip
        columns = [row[1] for row in db.execute("PRAGMA table_info(segments)")]
    assert columns[-3:] == ["speaker", "started_at", "ended_at"]


async def show(session: str, settings: Settings) -> tuple[int, str]:
    """``earshot transcripts show`` (in a thread: the command runs its own event loop)."""
    env = {"EARSHOT_SEGMENTS_URL": settings.resolved_segments_url()}
    invoke = CliRunner().invoke
    result = await asyncio.to_thread(invoke, app, ["transcripts", "show", session], env=env)
    return result.exit_code, result.output


async def test_the_cli_prints_a_stored_transcript_with_speakers_and_times(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    store = await backends.open_segment_store(settings.resolved_segments_url())
    try:
        await store.ensure_session(SessionId("call-1"), "carol")
        await store.add_segment(Segment(SessionId("call-1"), 1, "a phone call", T0))
        for seq, speaker in ((1, "alice"), (2, "bob")):
            await store.add_segment(talk_segment(seq, speaker))
    finally:
        await store.aclose()
    code, output = await show("talk:r00m:20261203T040506", settings)
    lines = output.splitlines()
    assert code == 0, output
    assert lines[0].startswith("session talk:r00m:20261203T040506 (user -, started ")
    assert lines[0].endswith("UTC): 2 segments, speakers alice, bob")
    assert lines[1:] == [
        "#1 [04:05:07.125-04:05:08.875] alice: words of alice",
        "#2 [04:05:08.125-04:05:09.875] bob: words of bob",
    ]
    code, output = await show("call-1", settings)
    assert code == 0, output
    assert output.splitlines()[1:] == ["#1 [04:05:06.000] a phone call"]
    assert "(user carol, started" in output
    assert await show("nobody", settings) == (
        1,
        "earshot: error: no stored session 'nobody' (hint: check the session id)\n",
    )


@pytest_asyncio.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    async with keeping.open_journal(Settings(cache_dir=tmp_path)) as opened:
        yield opened


async def test_a_two_speaker_call_is_kept_as_one_session_with_who_spoke_when(
    double: SignalingDouble, recognizer: Recognizer, journal: Journal, tmp_path: Path
) -> None:
    rooms = Rooms(talk_settings(double), recognizer, journal=journal)
    try:
        alice = double.participant("room1", "alice", in_call=SPEAKS)
        bob = double.participant("room1", "bob", in_call=SPEAKS)
        carol = double.participant("room1", "carol", in_call=messages.IN_CALL)
        await rooms.transcribe("room1", "nc-carol", enable=True, lang="en")
        room = rooms.room("room1")
        assert room is not None
        kept_as = room.transcript_id
        [bot] = double.clients()
        peers = [await publish(double, speaker, bot.session_id) for speaker in (alice, bob)]
        try:
            await until(
                lambda: (
                    {m["speakerSessionId"] for m in transcripts(carol) if m["final"]}
                    == {alice.session_id, bob.session_id}
                )
            )
        finally:
            for pc in peers:
                await pc.close()
    finally:
        await rooms.aclose()  # the last finals are spooled and stored before this returns
    finals = [m for m in transcripts(carol) if m["final"]]
    assert kept_as.startswith("talk:room1:")
    store = await backends.open_segment_store(Settings(cache_dir=tmp_path).resolved_segments_url())
    try:
        kept = await store.segments(SessionId(kept_as))
    finally:
        await store.aclose()
    assert [s.seq for s in kept] == list(range(1, len(kept) + 1))
    assert len(kept) >= len(finals)
    spoken = {(m["speakerSessionId"], m["message"]) for m in finals}
    assert spoken <= {(s.speaker, s.text) for s in kept}  # the double's users have no user id
    assert all(s.started_at and s.ended_at and s.started_at <= s.ended_at for s in kept)


async def test_the_exapp_is_unhealthy_when_its_transcripts_cannot_be_kept(
    double: SignalingDouble, recognizer: Recognizer, tmp_path: Path
) -> None:
    async with keeping.open_journal(Settings(cache_dir=tmp_path)) as stopped:
        assert stopped.healthy
    # Its spool writer is closed now, as one that died would be.
    settings = settings_for(double.url)
    async with exapp_for(settings, recognizer) as app:
        healthy = await app.http.get("/heartbeat")
        app.services.rooms.journal = stopped
        broken = await app.http.get("/heartbeat")
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
    assert (broken.status_code, broken.json()) == (
        503,
        {"status": "error", "error": "the spool or its persister stopped working"},
    )
