"""The HTTP side of a room's gateway: heartbeat, readiness from the call, guarded status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk.attendance import Attendance
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.ownroom import OwnTalkRoom
from earshot.gateways.talk.roomserving import Attending, create_room_app
from earshot.settings import Settings

TOKEN = "room-access-token"


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture
async def room_app(recognizer: Recognizer) -> AsyncIterator[tuple[httpx.AsyncClient, Attending]]:
    talk = TalkSettings(room_token="r00m", talkroom_name="talk-r00m", namespace="talk")
    settings = Settings(access_token=TOKEN)
    rooms = Rooms(talk, recognizer)
    # Not run here: its TalkRoom is never read, so it stays Joining.
    unreachable = httpx.AsyncClient(base_url="https://127.0.0.1:9")
    attending = Attending(
        Attendance(talk, rooms, OwnTalkRoom(unreachable, namespace="talk", name="talk-r00m"))
    )
    app = create_room_app(talk, settings, rooms, attending)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        yield http, attending
    await unreachable.aclose()
    await rooms.aclose()


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
