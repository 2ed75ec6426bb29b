"""A room end to end against the signaling double: real aiortc peers, the tiny engine, routing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk import messages
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import AdmissionRefused, Rooms, UnknownRoom, UnsupportedLanguage
from earshot.gateways.talk.signaling import SignalingUnavailable
from earshot.settings import Settings
from tests.hpb_double import Session, SignalingDouble, eventually, running_double
from tests.talk_media import PlayedTrack, syllables

SECRET = "internal-secret"
NEXTCLOUD = "http://127.0.0.1:9"
ROOM = "room1"
SPEAKS = messages.IN_CALL | messages.WITH_AUDIO


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


def talk_settings(double: SignalingDouble, **overrides: Any) -> TalkSettings:
    values: dict[str, Any] = {
        "hpb_url": double.url,
        "internal_secret": SECRET,
        "nextcloud_url": NEXTCLOUD,
        "grace_seconds": 0.2,
        "partial_interval_seconds": 0.0,
        "languages": ("en", "fr"),
        **overrides,
    }
    return TalkSettings(**values)


@pytest_asyncio.fixture
async def rooms(double: SignalingDouble, recognizer: Recognizer) -> AsyncIterator[Rooms]:
    hosted = Rooms(talk_settings(double), recognizer)
    yield hosted
    await hosted.aclose()


async def publish(double: SignalingDouble, speaker: Session, bot: str) -> RTCPeerConnection:
    """Answer the bot's requestoffer like Janus would: offer the speaker's audio, take the answer."""
    await until(lambda: any(m["type"] == "requestoffer" for m in speaker.inbox))
    assert speaker.inbox[0] == {"type": "requestoffer", "roomType": "video"}
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    speech = np.concatenate([syllables(2.0), np.zeros(48_000 * 3, np.float32)])
    pc.addTrack(PlayedTrack(speech, layout="stereo"))
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"type": "offer", "sdp": pc.localDescription.sdp}
    await double.send_from(
        speaker,
        bot,
        {"to": bot, "type": "offer", "roomType": "video", "sid": "sid-1", "payload": offer},
    )
    await until(lambda: any(m["type"] == "answer" for m in speaker.inbox))
    answer = next(m for m in speaker.inbox if m["type"] == "answer")
    assert (answer["sid"], answer["roomType"], answer["payload"]["type"]) == (
        "sid-1",
        "video",
        "answer",
    )
    await pc.setRemoteDescription(RTCSessionDescription(answer["payload"]["sdp"], "answer"))
    return pc


SIGNALING_ERRORS = "earshot_talk_signaling_errors_total"


async def until(predicate: Any) -> None:
    await eventually(predicate, 20.0, what="the room to get there")


def transcripts(session: Session) -> list[dict[str, Any]]:
    return [m for m in session.inbox if m["type"] == "transcript"]


async def test_captions_reach_only_the_session_that_asked_with_the_speaker_id(
    double: SignalingDouble, rooms: Rooms
) -> None:
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    bob = double.participant(ROOM, "bob", in_call=messages.IN_CALL)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang="en")
    [bot] = double.clients()
    pc = await publish(double, alice, bot.session_id)
    try:
        await until(lambda: any(m["final"] for m in transcripts(bob)))
    finally:
        await pc.close()
    received = transcripts(bob)
    assert any(not m["final"] for m in received)
    assert {m["speakerSessionId"] for m in received} == {alice.session_id}
    assert all(m["langId"] == "en" and m["roomType"] == "video" and m["message"] for m in received)
    assert transcripts(alice) == []


async def test_the_last_target_turning_captions_off_makes_the_gateway_leave(
    double: SignalingDouble, rooms: Rooms
) -> None:
    double.participant(ROOM, "bob", in_call=messages.IN_CALL)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    assert ROOM in rooms
    await rooms.transcribe(ROOM, "nc-bob", enable=False, lang=None)
    await until(lambda: ROOM not in rooms)
    await double.wait_for(lambda: not double.clients())
    assert double.received[-1]["type"] == "bye"


async def test_the_call_ending_for_everyone_makes_the_gateway_leave(
    double: SignalingDouble, rooms: Rooms
) -> None:
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    await double.end_call(ROOM)
    await until(lambda: ROOM not in rooms)


async def test_a_speaker_leaving_is_no_longer_recognised(
    double: SignalingDouble, rooms: Rooms
) -> None:
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    await until(lambda: rooms.status()["rooms"][0]["speakers"] == 1)
    await double.set_in_call(alice, messages.IN_CALL)  # audio off
    await until(lambda: rooms.status()["rooms"][0]["speakers"] == 0)
    await double.set_in_call(alice, SPEAKS)
    await until(lambda: rooms.status()["rooms"][0]["speakers"] == 1)
    await double.leave(alice)
    await until(lambda: rooms.status()["rooms"][0]["speakers"] == 0)


async def test_an_offer_without_audio_is_refused_and_the_room_goes_on(
    double: SignalingDouble, rooms: Rooms
) -> None:
    refused = {"code": "no_audio_offered"}
    before = prometheus_client.REGISTRY.get_sample_value(SIGNALING_ERRORS, refused)
    assert before is not None  # counted from 0 since the gateway started, not from the first
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    [bot] = double.clients()
    await until(lambda: alice.inbox)
    video_only = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    )
    offer = {"type": "offer", "sid": "s", "payload": {"type": "offer", "sdp": video_only}}
    await double.send_from(alice, bot.session_id, offer)
    await double.send_from(alice, bot.session_id, {"type": "offer", "sid": "s", "payload": "junk"})
    await double.inject(bot.session_id, "{broken")
    await rooms.transcribe(ROOM, "nc-carol", enable=True, lang="fr")
    assert not any(m["type"] == "answer" for m in alice.inbox)
    status = rooms.status()["rooms"][0]
    assert (status["langId"], status["speakers"], status["targets"]) == ("fr", 1, 2)
    await until(
        lambda: prometheus_client.REGISTRY.get_sample_value(SIGNALING_ERRORS, refused) == before + 1
    )


async def test_languages_are_checked_and_set_per_room(
    double: SignalingDouble, rooms: Rooms
) -> None:
    with pytest.raises(UnsupportedLanguage):
        await rooms.transcribe(ROOM, "nc-bob", enable=True, lang="xx")
    assert ROOM not in rooms
    with pytest.raises(UnknownRoom):
        rooms.set_language(ROOM, "fr")
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    rooms.set_language(ROOM, "fr")
    assert rooms.status()["rooms"][0]["langId"] == "fr"
    with pytest.raises(UnsupportedLanguage):
        rooms.set_language(ROOM, "de")


async def test_a_room_past_the_memory_limit_is_refused(
    double: SignalingDouble, recognizer: Recognizer
) -> None:
    hosted = Rooms(
        talk_settings(
            double, memory_limit_mb=90, room_memory_mb=10, speaker_memory_mb=20, expected_speakers=2
        ),
        recognizer,
    )
    double.rooms.add("room2")
    try:
        await hosted.transcribe(ROOM, "nc-bob", enable=True, lang=None)
        with pytest.raises(AdmissionRefused, match="over the limit"):
            await hosted.transcribe("room2", "nc-bob", enable=True, lang=None)
        assert "room2" not in hosted
    finally:
        await hosted.aclose()


async def test_several_rooms_are_served_by_one_process(
    double: SignalingDouble, rooms: Rooms
) -> None:
    double.rooms.add("room2")
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    await rooms.transcribe("room2", "nc-dan", enable=True, lang=None)
    assert len(double.clients()) == 2
    await rooms.leave(ROOM)
    assert ROOM not in rooms
    assert "room2" in rooms


async def test_an_unreachable_signaling_server_is_reported(recognizer: Recognizer) -> None:
    settings = TalkSettings(
        hpb_url="ws://127.0.0.1:9/spreed", internal_secret=SECRET, nextcloud_url=NEXTCLOUD
    )
    hosted = Rooms(settings, recognizer)
    with pytest.raises(SignalingUnavailable):
        await hosted.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    assert ROOM not in hosted


async def test_after_a_new_session_every_speaker_is_asked_for_its_stream_again(
    double: SignalingDouble, rooms: Rooms
) -> None:
    alice = double.participant(ROOM, "alice", in_call=SPEAKS)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    [bot] = double.clients()
    await until(lambda: len(alice.inbox) == 1)
    await double.expire(bot.session_id)
    await until(lambda: len(alice.inbox) == 2)
    assert [m["type"] for m in alice.inbox] == ["requestoffer", "requestoffer"]
    assert double.hellos == 2
    assert ROOM in rooms


async def test_a_target_leaving_the_room_ends_its_captions_and_the_room(
    double: SignalingDouble, rooms: Rooms
) -> None:
    bob = double.participant(ROOM, "bob", in_call=messages.IN_CALL)
    await rooms.transcribe(ROOM, "nc-bob", enable=True, lang=None)
    await until(lambda: rooms.status()["rooms"][0]["reachableTargets"] == 1)
    await double.leave(bob)
    # The last target gone: after the grace period the gateway leaves.
    await until(lambda: ROOM not in rooms)
