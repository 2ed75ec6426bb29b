"""The ExApp's endpoints: AppAPI auth, exact shapes and statuses, init progress, cluster requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk import talkrooms
from earshot.gateways.talk.app import Services
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.settings import Settings
from tests.hpb_double import SignalingDouble, running_double
from tests.servers import free_port
from tests.talk_exapp import APP_SECRET, NextcloudDouble, appapi_headers, running_exapp
from tests.taskprocessing_double import TaskProcessingDouble

SECRET = "internal-secret"
NEXTCLOUD = "http://127.0.0.1:9"
ROOM = "room1"

AUTHENTICATED = [
    ("POST", "/init", None),
    ("PUT", "/enabled?enabled=1", None),
    ("GET", "/enabled", None),
    ("GET", "/capabilities", None),
    ("GET", "/api/v1/languages", None),
    ("POST", "/api/v1/call/transcribe", {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True}),
    ("POST", "/api/v1/call/set-language", {"roomToken": ROOM, "langId": "en"}),
    ("POST", "/api/v1/call/leave", {"roomToken": ROOM}),
    ("GET", "/api/v1/status", None),
    ("GET", f"/api/v1/translation/languages?roomToken={ROOM}", None),
    (
        "POST",
        "/api/v1/translation/set-target-language",
        {"roomToken": ROOM, "ncSessionId": "nc-a", "langId": "fr"},
    ),
]
EN_FR = {
    "en": {"name": "English", "metadata": {"separator": " ", "rtl": False}},
    "fr": {"name": "French", "metadata": {"separator": " ", "rtl": False}},
}


@dataclass
class FakeTalkRooms:
    requests: list[tuple[talkrooms.TalkRoomSpec, str, bool]] = field(default_factory=list)
    changes: list[tuple[str, str | None, bool | None]] = field(default_factory=list)
    fail: bool = False
    refusal: str = ""
    awaited: list[str] = field(default_factory=list)

    async def request(self, spec: talkrooms.TalkRoomSpec, *, session: str, enable: bool) -> None:
        if self.fail:
            raise talkrooms.ClusterError("the API server answered 403: forbidden")
        self.requests.append((spec, session, enable))

    async def change(self, room_token: str, *, language: str | None, active: bool | None) -> bool:
        if self.fail:
            raise talkrooms.ClusterError("the API server answered 403: forbidden")
        self.changes.append((room_token, language, active))
        return room_token == ROOM

    async def wait_accepted(self, room_token: str, *, within: float) -> None:
        self.awaited.append(room_token)
        if self.refusal:
            raise talkrooms.NotAccepted(self.refusal)

    async def states(self) -> list[dict[str, Any]]:
        if self.fail:
            raise talkrooms.ClusterError("the API server answered 403: forbidden")
        return [{"roomToken": ROOM, "phase": "Ready", "state": "InCall", "speakers": 2}]


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture
async def double() -> AsyncIterator[SignalingDouble]:
    async with running_double(secret=SECRET, backend=NEXTCLOUD) as server:
        server.rooms.add(ROOM)
        yield server


@dataclass
class ExApp:
    http: httpx.AsyncClient
    nextcloud: NextcloudDouble
    services: Services

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", appapi_headers())
        return await self.http.request(method, path, json=body, headers=headers, **kwargs)


def settings_for(hpb_url: str, **overrides: Any) -> TalkSettings:
    values: dict[str, Any] = {
        "hpb_url": hpb_url,
        "internal_secret": SECRET,
        "nextcloud_url": NEXTCLOUD,
        "app_secret": APP_SECRET,
        "languages": ("en", "fr"),
        "grace_seconds": 0.1,
        "translation_poll_seconds": 0.01,
        **overrides,
    }
    return TalkSettings(**values)


@asynccontextmanager
async def exapp_for(
    settings: TalkSettings,
    recognizer: Recognizer,
    *,
    store: talkrooms.TalkRoomStore | None = None,
    taskprocessing: TaskProcessingDouble | None = None,
) -> AsyncIterator[ExApp]:
    nextcloud_double = NextcloudDouble()
    if taskprocessing is not None:
        nextcloud_double.taskprocessing = taskprocessing
    nextcloud = Nextcloud(settings, transport=nextcloud_double.transport())
    # As serving.open_services: a cluster's ExApp does not translate.
    translator = None if store is not None else nextcloud.task_processing()
    rooms = Rooms(settings, recognizer, ice_servers=nextcloud.ice_servers, translator=translator)
    services = Services(rooms=rooms, nextcloud=nextcloud, talkrooms=store)
    try:
        async with (
            running_exapp(settings, services) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            yield ExApp(http, nextcloud_double, services)
    finally:
        await rooms.aclose()
        await nextcloud.aclose()


@pytest_asyncio.fixture
async def exapp(double: SignalingDouble, recognizer: Recognizer) -> AsyncIterator[ExApp]:
    async with exapp_for(settings_for(double.url), recognizer) as app:
        yield app


async def test_heartbeat_needs_no_headers(exapp: ExApp) -> None:
    response = await exapp.http.get("/heartbeat")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        appapi_headers(secret="wrong"),
        appapi_headers(app_id="someone_else"),
        {**appapi_headers(), "AUTHORIZATION-APP-API": "%%%not-base64"},
        {k: v for k, v in appapi_headers().items() if k != "AA-VERSION"},
    ],
    ids=["none", "wrong-secret", "wrong-app-id", "garbled", "no-aa-version"],
)
async def test_every_endpoint_but_heartbeat_refuses_requests_without_valid_appapi_headers(
    exapp: ExApp, headers: dict[str, str]
) -> None:
    for method, path, body in AUTHENTICATED:
        response = await exapp.call(method, path, body, headers=headers)
        assert response.status_code == 401, path
        assert response.json()["error"], path
    assert exapp.services.rooms.status()["rooms"] == []


async def test_init_reports_progress_to_nextcloud_with_appapi_headers(exapp: ExApp) -> None:
    response = await exapp.call("POST", "/init")
    assert (response.status_code, response.json()) == (200, {})
    await exapp.services.nextcloud.wait_init()
    assert exapp.nextcloud.progress == [0, 100]
    put = exapp.nextcloud.requests[0]
    assert (put.method, put.url.path) == ("PUT", "/ocs/v1.php/apps/app_api/ex-app/status")
    assert put.headers["EX-APP-ID"] == "live_transcription"
    assert put.headers["OCS-APIRequest"] == "true"


async def test_languages_are_the_language_map_itself(exapp: ExApp) -> None:
    response = await exapp.call("GET", "/api/v1/languages")
    assert (response.status_code, response.json()) == (200, EN_FR)
    assert list(response.json()) == ["en", "fr"]  # the first is the default


async def test_capabilities_without_a_translation_provider_offer_transcription_only(
    exapp: ExApp,
) -> None:
    response = await exapp.call("GET", "/capabilities")
    assert (response.status_code, response.json()) == (
        200,
        {
            "live_transcription": {
                "version": "0.1.0",
                "features": ["live_transcription"],
                "live_transcription": {"supported_languages": EN_FR},
            }
        },
    )


async def test_enabled_and_capabilities_answer_appapi(exapp: ExApp) -> None:
    assert (await exapp.call("PUT", "/enabled?enabled=0")).json() == {"error": ""}
    assert (await exapp.call("GET", "/enabled")).json() == {"enabled": False}
    body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True}
    refused = await exapp.call("POST", "/api/v1/call/transcribe", body)
    assert refused.status_code == 503
    assert "disabled" in refused.json()["error"]
    assert (await exapp.call("PUT", "/enabled?enabled=1")).json() == {"error": ""}
    assert (await exapp.call("GET", "/enabled")).json() == {"enabled": True}


async def test_transcribe_joins_the_room_and_set_language_and_leave_follow_it(
    exapp: ExApp, double: SignalingDouble
) -> None:
    body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True, "langId": "en"}
    response = await exapp.call("POST", "/api/v1/call/transcribe", body)
    assert (response.status_code, response.json()) == (200, {"message": "transcription enabled"})
    assert len(double.clients()) == 1
    response = await exapp.call(
        "POST", "/api/v1/call/set-language", {"roomToken": ROOM, "langId": "fr"}
    )
    assert (response.status_code, response.json()) == (
        200,
        {"message": "captions in fr from now on"},
    )
    status = (await exapp.call("GET", "/api/v1/status")).json()
    assert status["rooms"][0]["langId"] == "fr"
    assert status["memory"]["limitMb"] == 2048.0
    response = await exapp.call("POST", "/api/v1/call/leave", {"roomToken": ROOM})
    assert (response.status_code, response.json()) == (200, {"message": "left the call"})
    await double.wait_for(lambda: not double.clients())


async def test_leaving_a_room_we_are_not_in_answers_200(exapp: ExApp) -> None:
    response = await exapp.call("POST", "/api/v1/call/leave", {"roomToken": "unknown"})
    assert (response.status_code, response.json()) == (
        200,
        {"message": "not in a call in room 'unknown'"},
    )


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/v1/call/transcribe", {"roomToken": ROOM}, 400),
        ("/api/v1/call/transcribe", {"roomToken": "", "ncSessionId": "a"}, 400),
        (
            "/api/v1/call/transcribe",
            {"roomToken": ROOM, "ncSessionId": "a", "enable": "maybe"},
            400,
        ),
        ("/api/v1/call/transcribe", {"roomToken": ROOM, "ncSessionId": "a", "langId": "xx"}, 400),
        ("/api/v1/call/transcribe", [1, 2], 400),
        ("/api/v1/call/set-language", {"roomToken": "unknown", "langId": "en"}, 404),
        ("/api/v1/call/set-language", {"roomToken": ROOM}, 400),
        ("/api/v1/call/leave", {}, 400),
        ("/api/v1/translation/set-target-language", {"roomToken": ROOM, "langId": "fr"}, 400),
    ],
)
async def test_bad_requests_get_a_precise_status_and_an_error_body(
    exapp: ExApp, path: str, body: Any, status: int
) -> None:
    response = await exapp.call("POST", path, body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert response.json()["error"]


async def test_a_body_that_is_not_json_is_a_bad_request(exapp: ExApp) -> None:
    response = await exapp.http.post(
        "/api/v1/call/transcribe",
        content=b"{nope",
        headers={**appapi_headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]


async def test_an_unreachable_signaling_server_answers_503(recognizer: Recognizer) -> None:
    settings = settings_for(f"ws://127.0.0.1:{free_port()}")
    async with exapp_for(settings, recognizer) as app:
        body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True}
        response = await app.call("POST", "/api/v1/call/transcribe", body)
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]


async def test_an_unknown_hpb_room_answers_404(exapp: ExApp) -> None:
    body = {"roomToken": "not-in-talk", "ncSessionId": "nc-a", "enable": True}
    response = await exapp.call("POST", "/api/v1/call/transcribe", body)
    assert response.status_code == 404
    assert "no_such_room" in response.json()["error"]


async def test_a_room_past_the_memory_limit_answers_503(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    settings = settings_for(double.url, memory_limit_mb=1.0)
    async with exapp_for(settings, recognizer) as app:
        body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True}
        response = await app.call("POST", "/api/v1/call/transcribe", body)
    assert response.status_code == 503
    assert "memory" in response.json()["error"]
    assert double.clients() == []


async def test_in_a_cluster_a_request_becomes_a_talkroom_and_no_call_is_joined(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    store = FakeTalkRooms()
    settings = settings_for(double.url, in_cluster=True, engine="kyutai")
    async with exapp_for(settings, recognizer, store=store) as app:
        body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True, "langId": "fr"}
        response = await app.call("POST", "/api/v1/call/transcribe", body)
        assert (response.status_code, response.json()) == (
            200,
            {"message": "transcription enabled"},
        )
        store.fail = True
        failed = await app.call("POST", "/api/v1/call/transcribe", body)
    assert failed.status_code == 503
    assert "403" in failed.json()["error"]
    [(spec, session, enable)] = store.requests
    assert (spec.room_token, spec.ordered_languages(), spec.engine, session, enable) == (
        ROOM,
        ["fr", "en"],
        "kyutai",
        "nc-a",
        True,
    )
    assert double.clients() == []


async def test_in_a_cluster_a_request_without_langid_leaves_the_rooms_language_alone(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    store = FakeTalkRooms()
    settings = settings_for(double.url, in_cluster=True, engine="kyutai")
    async with exapp_for(settings, recognizer, store=store) as app:
        body = {"roomToken": ROOM, "ncSessionId": "nc-b", "enable": True}
        assert (await app.call("POST", "/api/v1/call/transcribe", body)).status_code == 200
    [(spec, _, _)] = store.requests
    assert (spec.language, spec.languages) == (None, ("en", "fr"))


async def test_in_a_cluster_set_language_and_leave_change_the_talkroom(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    store = FakeTalkRooms()
    settings = settings_for(double.url, in_cluster=True)
    async with exapp_for(settings, recognizer, store=store) as app:
        ok = await app.call(
            "POST", "/api/v1/call/set-language", {"roomToken": ROOM, "langId": "fr"}
        )
        unknown = await app.call("POST", "/api/v1/call/leave", {"roomToken": "other"})
        bad = await app.call(
            "POST", "/api/v1/call/set-language", {"roomToken": ROOM, "langId": "xx"}
        )
        left = await app.call("POST", "/api/v1/call/leave", {"roomToken": ROOM})
    assert [r.status_code for r in (ok, unknown, bad, left)] == [200, 200, 400, 200]
    assert unknown.json() == {"message": "left the call"}
    assert store.changes == [(ROOM, "fr", None), ("other", None, False), (ROOM, None, False)]
    assert store.awaited == []  # the room's gateway follows its TalkRoom, not the operator


async def test_in_a_cluster_talk_hears_200_only_once_the_operator_accepted_the_talkroom(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    store = FakeTalkRooms(refusal="the operator refused TalkRoom talk-room1: bad hpbUrl")
    settings = settings_for(double.url, in_cluster=True)
    body = {"roomToken": ROOM, "ncSessionId": "nc-a", "enable": True}
    async with exapp_for(settings, recognizer, store=store) as app:
        refused = await app.call("POST", "/api/v1/call/transcribe", body)
        store.refusal = ""
        accepted = await app.call("POST", "/api/v1/call/transcribe", body)
    assert (refused.status_code, refused.json()) == (
        503,
        {"error": "the operator refused TalkRoom talk-room1: bad hpbUrl"},
    )
    assert accepted.status_code == 200
    assert store.awaited == [ROOM, ROOM]


async def test_in_a_cluster_the_status_shows_each_talkrooms_call(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    store = FakeTalkRooms()
    settings = settings_for(double.url, in_cluster=True)
    async with exapp_for(settings, recognizer, store=store) as app:
        shown = await app.call("GET", "/api/v1/status")
        store.fail = True
        failed = await app.call("GET", "/api/v1/status")
    assert shown.json() == {
        "enabled": True,
        "cluster": True,
        "rooms": [{"roomToken": ROOM, "phase": "Ready", "state": "InCall", "speakers": 2}],
    }
    assert failed.status_code == 503
    assert "403" in failed.json()["error"]
