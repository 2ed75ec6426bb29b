"""Live translation: the ExApp's endpoints, TaskProcessing, and translated finals in a call.

Nextcloud's TaskProcessing is :class:`tests.taskprocessing_double.TaskProcessingDouble` (what cannot
run here); the call is the signaling double with real aiortc peers and the tiny engine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from earshot import metrics
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk import messages, taskprocessing
from earshot.gateways.talk.taskprocessing import TaskProcessing
from tests.hpb_double import SignalingDouble
from tests.talk_exapp import APP_SECRET, appapi_headers
from tests.taskprocessing_double import TaskProcessingDouble, translated
from tests.unit.test_talk_exapp import ROOM, ExApp, exapp_for, settings_for
from tests.unit.test_talk_exapp import double as double
from tests.unit.test_talk_exapp import recognizer as recognizer
from tests.unit.test_talk_rooms import publish, transcripts, until

SPEAKS = messages.IN_CALL | messages.WITH_AUDIO
LANG = {"separator": " ", "rtl": False}
NAMED = {
    "en": {"name": "English", "metadata": LANG},
    "fr": {"name": "French", "metadata": LANG},
    "de": {"name": "German", "metadata": LANG},
}


@pytest.fixture
def provider() -> TaskProcessingDouble:
    return TaskProcessingDouble(APP_SECRET)


@pytest_asyncio.fixture
async def exapp(
    double: SignalingDouble,
    recognizer: Recognizer,
    provider: TaskProcessingDouble,
) -> AsyncIterator[ExApp]:
    async with exapp_for(settings_for(double.url), recognizer, taskprocessing=provider) as app:
        yield app


async def transcribe(app: ExApp, session: str, **extra: Any) -> httpx.Response:
    body = {"roomToken": ROOM, "ncSessionId": session, "enable": True, "langId": "en", **extra}
    return await app.call("POST", "/api/v1/call/transcribe", body)


async def set_target(
    app: ExApp, session: str, lang: str | None, room: str = ROOM
) -> httpx.Response:
    body = {"roomToken": room, "ncSessionId": session, "langId": lang}
    return await app.call("POST", "/api/v1/translation/set-target-language", body)


async def test_capabilities_offer_live_translation_with_the_providers_languages(
    exapp: ExApp,
) -> None:
    response = await exapp.call("GET", "/capabilities")
    en_fr = {code: NAMED[code] for code in ("en", "fr")}
    assert (response.status_code, response.json()) == (
        200,
        {
            "live_transcription": {
                "version": "0.1.0",
                "features": ["live_transcription", "live_translation"],
                "live_transcription": {"supported_languages": en_fr},
                "live_translation": {
                    "supported_translation_languages": {
                        "origin_languages": NAMED,
                        "target_languages": NAMED,
                    }
                },
            }
        },
    )


async def test_translation_languages_are_the_providers(exapp: ExApp) -> None:
    response = await exapp.call("GET", f"/api/v1/translation/languages?roomToken={ROOM}")
    assert (response.status_code, response.json()) == (
        200,
        {"origin_languages": NAMED, "target_languages": NAMED},
    )


async def test_without_a_provider_translation_answers_550_and_is_not_offered(
    exapp: ExApp, provider: TaskProcessingDouble
) -> None:
    provider.provider = False
    languages = await exapp.call("GET", "/api/v1/translation/languages")
    capabilities = (await exapp.call("GET", "/capabilities")).json()["live_transcription"]
    enabling = await transcribe(exapp, "nc-a", translationTargetLangId="fr")
    assert languages.status_code == 550
    assert "no core:text2text:translate task type" in languages.json()["error"]
    assert capabilities["features"] == ["live_transcription"]
    assert "live_translation" not in capabilities
    assert enabling.status_code == 550
    assert set(enabling.json()) == {"error"}


async def test_a_nextcloud_that_fails_answers_500(exapp: ExApp) -> None:
    async def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway")

    translator = exapp.services.rooms.translator
    assert isinstance(translator, TaskProcessing)
    translator._http = httpx.AsyncClient(
        base_url="http://nc", transport=httpx.MockTransport(broken)
    )
    try:
        response = await exapp.call("GET", "/api/v1/translation/languages")
    finally:
        await translator._http.aclose()
    assert response.status_code == 500
    assert "502" in response.json()["error"]


async def test_set_target_language_refuses_precisely(
    exapp: ExApp,
    double: SignalingDouble,
) -> None:
    double.participant(ROOM, "bob", in_call=messages.IN_CALL)
    assert (await transcribe(exapp, "nc-bob")).status_code == 200
    cases = {
        "unknown room": (await set_target(exapp, "nc-bob", "fr", room="nope"), 404),
        "not a target": (await set_target(exapp, "nc-carol", "fr"), 412),
        "same language": (await set_target(exapp, "nc-bob", "en"), 400),
        "not offered": (await set_target(exapp, "nc-bob", "xx"), 400),
    }
    for case, (response, status) in cases.items():
        assert response.status_code == status, case
        assert set(response.json()) == {"error"}, case
    assert cases["not a target"][0].json() == {
        "error": "session 'nc-carol' has not enabled transcription in room 'room1'"
    }
    on = await set_target(exapp, "nc-bob", "fr")
    off = await set_target(exapp, "nc-bob", None)
    assert (on.status_code, on.json()) == (
        200,
        {"message": "finals are translated into fr for this participant"},
    )
    assert (off.status_code, off.json()) == (
        200,
        {"message": "translation turned off; captions in the room's language again"},
    )


async def test_transcribe_refuses_a_translation_pair_the_provider_lacks(exapp: ExApp) -> None:
    response = await transcribe(exapp, "nc-a", translationTargetLangId="xx")
    assert (response.status_code, response.json()) == (
        400,
        {"error": "the translation provider cannot translate 'en' into 'xx'"},
    )
    assert exapp.services.rooms.status()["rooms"] == []  # nothing joined for a bad request


async def test_a_participant_who_chose_french_gets_french_finals_and_the_others_do_not(
    exapp: ExApp,
    double: SignalingDouble,
    provider: TaskProcessingDouble,
) -> None:
    provider.delay = 0.3  # a slow provider
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    bob = double.participant(ROOM, "bob", in_call=messages.IN_CALL)
    carol = double.participant(ROOM, "carol", in_call=messages.IN_CALL)
    assert (await transcribe(exapp, "nc-bob")).status_code == 200
    assert (await transcribe(exapp, "nc-carol", translationTargetLangId="fr")).status_code == 200
    sent_before = metrics.TALK_TRANSLATIONS.labels("sent")._value.get()
    [bot] = double.clients()
    pc = await publish(double, alice, bot.session_id)
    try:
        await until(lambda: any(m["final"] for m in transcripts(bob)))
        await until(lambda: bool(transcripts(carol)))
    finally:
        await pc.close()
    finals = [m for m in transcripts(bob) if m["final"]]
    french = transcripts(carol)
    assert {m["langId"] for m in transcripts(bob)} == {"en"}
    assert [m["message"] for m in french] == [translated(m["message"], "fr") for m in finals]
    assert all(m["final"] and m["langId"] == "fr" for m in french)
    assert {m["speakerSessionId"] for m in french} == {alice.session_id}
    assert provider.scheduled()[0] == {
        "input": finals[0]["message"],
        "origin_language": "en",
        "target_language": "fr",
    }
    assert provider.polls >= 1  # the slow provider was polled until done
    assert metrics.TALK_TRANSLATIONS.labels("sent")._value.get() > sent_before
    assert transcripts(alice) == []


async def test_turning_translation_off_brings_back_the_rooms_captions(
    exapp: ExApp,
    double: SignalingDouble,
) -> None:
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    carol = double.participant(ROOM, "carol", in_call=messages.IN_CALL)
    assert (await transcribe(exapp, "nc-carol", translationTargetLangId="de")).status_code == 200
    assert (await set_target(exapp, "nc-carol", None)).status_code == 200
    [bot] = double.clients()
    pc = await publish(double, alice, bot.session_id)
    try:
        await until(lambda: any(m["final"] for m in transcripts(carol)))
    finally:
        await pc.close()
    assert {m["langId"] for m in transcripts(carol)} == {"en"}
    assert any(not m["final"] for m in transcripts(carol))


async def _translator(provider: TaskProcessingDouble, **options: float) -> TaskProcessing:
    http = httpx.AsyncClient(
        base_url="http://nextcloud", transport=provider.transport(), headers=appapi_headers()
    )
    http.headers["OCS-APIRequest"] = "true"
    values = {"poll_seconds": 0.01, "timeout_seconds": 5.0, "languages_ttl_seconds": 60.0}
    return TaskProcessing(http, app_id="live_transcription", **{**values, **options})


async def test_a_failed_or_slow_task_is_a_translation_failure() -> None:
    provider = TaskProcessingDouble(APP_SECRET, fail=True)
    translator = await _translator(provider, timeout_seconds=0.2)
    with pytest.raises(taskprocessing.TranslationFailed, match="STATUS_FAILED"):
        await translator.translate("hello", origin="en", target="fr", custom_id="t1")
    provider.fail, provider.delay = False, 5.0
    with pytest.raises(taskprocessing.TranslationFailed, match=r"took over 0\.2 s"):
        await translator.translate("hello", origin="en", target="fr", custom_id="t2")
    provider.provider = False
    with pytest.raises(taskprocessing.TranslationUnavailable, match="412"):
        await translator.translate("hello", origin="en", target="fr", custom_id="t3")


async def test_an_unlisted_origin_is_detected_and_the_languages_are_cached() -> None:
    provider = TaskProcessingDouble(
        APP_SECRET, origin={"detect_language": "Detect", "fr": "French"}
    )
    translator = await _translator(provider)
    offered = await translator.languages()
    assert offered.can_translate("en", "de")
    assert offered.origin_for("en") == "detect_language"
    provider.provider = False
    assert await translator.languages() == offered  # cached for the TTL
    provider.provider = True
    text = await translator.translate("hi", origin="detect_language", target="de", custom_id="x")
    assert text == "[de] hi"
    assert provider.tasks[1]["customId"] == "x"


async def test_a_room_switched_to_the_chosen_language_captions_that_participant_again(
    exapp: ExApp,
    double: SignalingDouble,
) -> None:
    double.participant(ROOM, "carol", in_call=messages.IN_CALL)
    assert (await transcribe(exapp, "nc-carol", translationTargetLangId="fr")).status_code == 200
    room = exapp.services.rooms.room(ROOM)
    assert room is not None
    await until(lambda: "nc-carol" in room.targets.hpb_by_nextcloud)
    assert room.targets.translation_sessions("fr") == ["hpb-carol"]
    assert room.targets.sessions() == []
    switched = await exapp.call(
        "POST", "/api/v1/call/set-language", {"roomToken": ROOM, "langId": "fr"}
    )
    assert switched.status_code == 200
    assert (room.lang, room.targets.translating) == ("fr", {})
    assert room.targets.sessions() == ["hpb-carol"]


async def test_a_translation_into_the_rooms_own_language_is_refused_and_enables_nothing(
    exapp: ExApp,
) -> None:
    assert (await transcribe(exapp, "nc-a", langId="fr")).status_code == 200
    # No langId: the room stays in French, so French is no translation.
    body = {
        "roomToken": ROOM,
        "ncSessionId": "nc-b",
        "enable": True,
        "translationTargetLangId": "fr",
    }
    response = await exapp.call("POST", "/api/v1/call/transcribe", body)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "the room is already captioned in 'fr'"},
    )
    room = exapp.services.rooms.room(ROOM)
    assert room is not None
    assert "nc-b" not in room.targets.wanted
