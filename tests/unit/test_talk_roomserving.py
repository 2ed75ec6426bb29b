"""The HTTP side of a room's gateway: heartbeat, readiness from the call, guarded status.

A room's gateway keeps its call's transcripts through a real journal (spool, embedded drainer,
SQLite): its ``/heartbeat`` fails while that journal cannot keep them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.events import Segment, SessionId
from earshot.gateways.talk import keeping
from earshot.gateways.talk.attendance import Attendance
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.ownroom import OwnTalkRoom
from earshot.gateways.talk.roomserving import Attending, create_room_app
from earshot.persistence.draining import Drainer
from earshot.persistence.journaling import Journal
from earshot.persistence.spool import SpoolError
from earshot.settings import Settings
from tests.hanging import HangingSegmentWrites

TOKEN = "room-access-token"
TALK = TalkSettings(room_token="r00m", talkroom_name="talk-r00m", namespace="talk")
NOT_KEPT = {
    "status": "error",
    "error": "the spool or its persister stopped working: transcripts are not kept",
}


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


@asynccontextmanager
async def room_gateway(
    recognizer: Recognizer, journal: Journal | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Attending]]:
    """The room gateway's app as ``serve`` builds it, keeping transcripts in ``journal``."""
    settings = Settings(access_token=TOKEN)
    rooms = Rooms(TALK, recognizer, journal=journal)
    # Not run here: its TalkRoom is never read, so it stays Joining.
    unreachable = httpx.AsyncClient(base_url="https://127.0.0.1:9")
    attending = Attending(
        Attendance(TALK, rooms, OwnTalkRoom(unreachable, namespace="talk", name="talk-r00m"))
    )
    app = create_room_app(TALK, settings, rooms, attending)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as http:
            yield http, attending
    finally:
        await unreachable.aclose()
        await rooms.aclose()


@pytest_asyncio.fixture
async def room_app(recognizer: Recognizer) -> AsyncIterator[tuple[httpx.AsyncClient, Attending]]:
    async with room_gateway(recognizer) as served:
        yield served


async def heartbeat_when(http: httpx.AsyncClient, status: int) -> httpx.Response:
    """The first ``/heartbeat`` answer with ``status``, or the last one after 20 s."""
    answer = await http.get("/heartbeat")
    for _ in range(200):
        if answer.status_code == status:
            break
        await asyncio.sleep(0.1)
        answer = await http.get("/heartbeat")
    return answer


async def test_a_room_gateway_not_in_its_call_is_alive_but_not_ready(
    room_app: tuple[httpx.AsyncClient, Attending],
) -> None:
    http, _ = room_app
    heartbeat = await http.get("/heartbeat")
    ready = await http.get("/ready")
    assert (heartbeat.status_code, heartbeat.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503
    assert ready.json() == {
        "roomToken": "r00m",
        "talkRoom": "talk-r00m",
        "state": "Joining",
        "message": "reading TalkRoom talk-r00m",
        "speakers": 0,
        "targets": 0,
    }


async def test_the_status_needs_the_rooms_access_token(
    room_app: tuple[httpx.AsyncClient, Attending],
) -> None:
    http, _ = room_app
    refused = await http.get("/api/v1/status")
    wrong = await http.get("/api/v1/status", headers={"Authorization": "Bearer nope"})
    shown = await http.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert [r.status_code for r in (refused, wrong, shown)] == [401, 401, 200]
    assert shown.json()["state"] == "Joining"
    assert shown.json()["rooms"] == []


async def test_a_broken_attendance_makes_the_process_unhealthy(
    room_app: tuple[httpx.AsyncClient, Attending],
) -> None:
    http, attending = room_app

    async def broken() -> None:
        raise RuntimeError("the watch broke")

    attending.task = asyncio.create_task(broken())
    await asyncio.wait([attending.task])
    heartbeat = await http.get("/heartbeat")
    assert heartbeat.status_code == 503
    assert heartbeat.json()["error"] == "attending the room failed: RuntimeError('the watch broke')"
    assert (await http.get("/ready")).status_code == 503


async def test_a_room_gateway_whose_spool_writer_thread_died_is_unhealthy(
    recognizer: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        keeping.open_journal(Settings(cache_dir=tmp_path)) as journal,
        room_gateway(recognizer, journal) as (http, _),
    ):
        healthy = await http.get("/heartbeat")

        def broken(appends: object) -> None:
            raise RuntimeError("a bug in the writer thread")

        monkeypatch.setattr(journal._writer, "_commit", broken)
        with pytest.raises(SpoolError):
            await journal.final(Segment(SessionId("talk:r00m:x"), 1, "lost", datetime.now(UTC)))
        broken_answer = await http.get("/heartbeat")
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
    assert (broken_answer.status_code, broken_answer.json()) == (503, NOT_KEPT)


async def test_a_room_gateway_whose_embedded_drainer_stopped_is_unhealthy(
    recognizer: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Drainer) -> int:
        raise RuntimeError("a bug in the drainer")

    async with (
        keeping.open_journal(Settings(cache_dir=tmp_path)) as journal,
        room_gateway(recognizer, journal) as (http, _),
    ):
        healthy = await http.get("/heartbeat")
        monkeypatch.setattr(Drainer, "_round", broken)
        stopped = await heartbeat_when(http, 503)
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
    assert (stopped.status_code, stopped.json()) == (503, NOT_KEPT)


async def test_a_room_gateway_is_unhealthy_while_its_drainer_hangs_in_a_store_write(
    recognizer: Recognizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(cache_dir=tmp_path, persister_stall_seconds=2.0)
    async with (
        keeping.open_journal(settings) as journal,
        room_gateway(recognizer, journal) as (http, _),
    ):
        healthy = await http.get("/heartbeat")
        hanging = HangingSegmentWrites(monkeypatch)
        try:
            # The call's opening is the drainer's next write to the segment store.
            await journal.open_session(keeping.session_id(TALK.room_token, datetime.now(UTC)))
            await asyncio.wait_for(hanging.entered.wait(), 20.0)
            stuck = await heartbeat_when(http, 503)
        finally:
            hanging.let_go()
        moving = await heartbeat_when(http, 200)
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})
    assert (stuck.status_code, stuck.json()) == (503, NOT_KEPT)
    # A store write that hangs is a stall, not a death: the drainer beats again once it returns.
    assert (moving.status_code, moving.json()) == (200, {"status": "ok"})
