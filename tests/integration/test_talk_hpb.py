"""Live captions through Talk's REAL HPB stack: signaling server 1.2.4, Janus, NATS.

Two participants join a room and publish espeak-ng speech through Janus; Talk's request turns
captions on for one of them; the ExApp joins the call as an internal client, subscribes to both
speakers, recognises them with the tiny engine and sends ``transcript`` messages to that participant
only. Turning captions off for the last target makes the gateway leave the call; the call's
transcript, kept through the spool and the embedded persister, is read back with ``earshot
transcripts show``. Live translation goes through the TaskProcessing double (what cannot run here:
Nextcloud): a participant who chose French gets French finals, the other one captions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio

from earshot.engines import loading
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk import keeping
from earshot.gateways.talk.app import Services
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.settings import Settings
from tests.hpb_double import eventually
from tests.hpb_stack import HpbStack, StackUnavailable
from tests.talk_exapp import APP_SECRET, NextcloudDouble, appapi_headers, running_exapp
from tests.talk_media import RATE, espeak
from tests.talk_participants import Participant
from tests.taskprocessing_double import TaskProcessingDouble, translated

pytestmark = pytest.mark.integration

ROOM = "talkroom1"
IN_CALL_WITH_AUDIO = 1 | 2


@pytest.fixture(scope="module")
def hpb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HpbStack]:
    """A fresh stack for this module (the signaling server keeps room state between runs)."""
    stack = HpbStack(tmp_path_factory.mktemp("hpb"))
    try:
        stack.start()
    except StackUnavailable as exc:
        # Never skip: a machine without the stack must not pass the integration suite silently.
        pytest.fail(str(exc), pytrace=False)
    yield stack
    stack.close()


def speech(text: str, workdir: Path, *, voice: str) -> npt.NDArray[np.float32]:
    """espeak-ng speech at 48 kHz, followed by 3 s of silence (so a segment ends)."""
    return np.concatenate([espeak(text, workdir, voice=voice), np.zeros(3 * RATE, np.float32)])


@pytest_asyncio.fixture
async def recognizer(tiny_model_cache: Path) -> AsyncIterator[Recognizer]:
    engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    yield engine
    await engine.aclose()


def user_entry(participant: Participant, in_call: int) -> dict[str, Any]:
    return {
        "sessionId": participant.nextcloud_session_id,
        "inCall": in_call,
        "participantType": 3,
        "lastPing": 0,
        "userId": participant.user,
    }


async def until(predicate: Any, within: float, what: str) -> None:
    try:
        await eventually(predicate, within, what=what)
    except AssertionError as exc:
        pytest.fail(str(exc))


async def test_captions_reach_only_the_participant_who_asked_and_the_gateway_leaves_after(
    hpb: HpbStack, recognizer: Recognizer, tmp_path: Path
) -> None:
    settings = TalkSettings(
        hpb_url=hpb.signaling_url,
        internal_secret=hpb.internal_secret,
        nextcloud_url=hpb.nextcloud_url,
        app_secret=APP_SECRET,
        grace_seconds=0.5,
        partial_interval_seconds=0.0,
    )
    nextcloud = Nextcloud(settings)
    kept = Settings(cache_dir=tmp_path / "kept")
    alice = Participant(
        hpb.signaling_url, hpb.backend_url, user="alice", nextcloud_session_id="nc-alice"
    )
    bob = Participant(hpb.signaling_url, hpb.backend_url, user="bob", nextcloud_session_id="nc-bob")
    stack = contextlib.AsyncExitStack()
    try:
        # Leaving the stack drains the spool into the store (the embedded persister).
        journal = await stack.enter_async_context(keeping.open_journal(kept))
        rooms = Rooms(settings, recognizer, ice_servers=nextcloud.ice_servers, journal=journal)
        stack.push_async_callback(rooms.aclose)
        for participant in (alice, bob):
            await participant.connect(ROOM)
        everyone = [user_entry(alice, IN_CALL_WITH_AUDIO), user_entry(bob, IN_CALL_WITH_AUDIO)]
        await asyncio.to_thread(hpb.post_in_call, ROOM, everyone, everyone)
        await alice.publish(speech("hello there, this is alice speaking", tmp_path, voice="en-us"))
        await bob.publish(
            speech("good morning, bob here with the weather", tmp_path, voice="en-gb")
        )

        services = Services(rooms=rooms, nextcloud=nextcloud)
        async with (
            running_exapp(settings, services) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": True, "langId": "en"}
            response = await http.post(
                "/api/v1/call/transcribe", json=body, headers=appapi_headers()
            )
            assert (response.status_code, response.json()) == (
                200,
                {"message": "transcription enabled"},
            ), hpb.log_tail()
            # Nextcloud repeats the call's participants whenever the call changes.
            await asyncio.to_thread(hpb.post_in_call, ROOM, everyone, everyone)

            def finals_from_both() -> bool:
                finals = {t["speakerSessionId"] for t in alice.transcripts() if t["final"]}
                return finals == {alice.session_id, bob.session_id}

            await until(
                finals_from_both,
                60,
                f"finals for both speakers; alice got {alice.transcripts()}, status "
                f"{rooms.status()}",
            )
            received = alice.transcripts()
            assert {t["speakerSessionId"] for t in received if not t["final"]} == {
                alice.session_id,
                bob.session_id,
            }
            assert all(t["langId"] == "en" and t["message"] for t in received)
            [bot] = alice.transcript_senders()
            assert bob.transcripts() == []
            [in_call] = rooms.status()["rooms"]
            call = in_call["transcriptId"]

            body = {"roomToken": ROOM, "ncSessionId": "nc-alice", "enable": False}
            response = await http.post(
                "/api/v1/call/transcribe", json=body, headers=appapi_headers()
            )
            assert response.status_code == 200
            await until(lambda: ROOM not in rooms, 10, "the gateway to leave")
            status = await http.get("/api/v1/status", headers=appapi_headers())
            assert status.json()["rooms"] == []

            await until(lambda: bob.saw_leave(bot), 10, "the room to see the gateway leave")
    finally:
        await stack.aclose()
        await nextcloud.aclose()
        await alice.close()
        await bob.close()
    shown = await transcripts_show(call, kept)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"session {call} (user -, started ")
    assert lines[0].endswith("speakers alice, bob"), lines[0]
    finals = [t for t in alice.transcripts() if t["final"]]
    who = {alice.session_id: "alice", bob.session_id: "bob"}
    for final in finals:
        assert any(
            line.endswith(f"] {who[final['speakerSessionId']]}: {final['message']}")
            for line in lines[1:]
        ), (final, lines)
    assert all(
        re.match(r"#\d+ \[\d\d:\d\d:\d\d\.\d{3}-\d\d:\d\d:\d\d\.\d{3}\] ", x) for x in lines[1:]
    )


async def transcripts_show(session: str, settings: Settings) -> subprocess.CompletedProcess[str]:
    """``earshot transcripts show`` as an operator runs it, against the same segment store."""
    env = {**os.environ, "EARSHOT_SEGMENTS_URL": settings.resolved_segments_url()}
    command = [sys.executable, "-m", "earshot", "transcripts", "show", session]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, check=False
    )


async def test_a_participant_who_chose_french_gets_french_finals_through_the_real_hpb(
    hpb: HpbStack, recognizer: Recognizer, tmp_path: Path
) -> None:
    room = "talkroom2"
    settings = TalkSettings(
        hpb_url=hpb.signaling_url,
        internal_secret=hpb.internal_secret,
        nextcloud_url=hpb.nextcloud_url,
        app_secret=APP_SECRET,
        grace_seconds=0.5,
        partial_interval_seconds=0.0,
        languages=("en", "fr"),
        translation_poll_seconds=0.05,
    )
    provider = TaskProcessingDouble(APP_SECRET, delay=0.3)
    nextcloud = Nextcloud(settings, transport=NextcloudDouble(taskprocessing=provider).transport())
    rooms = Rooms(
        settings,
        recognizer,
        ice_servers=nextcloud.ice_servers,
        translator=nextcloud.task_processing(),
    )
    alice = Participant(
        hpb.signaling_url, hpb.backend_url, user="alice", nextcloud_session_id="nc-alice2"
    )
    bob = Participant(
        hpb.signaling_url, hpb.backend_url, user="bob", nextcloud_session_id="nc-bob2"
    )
    try:
        for participant in (alice, bob):
            await participant.connect(room)
        everyone = [user_entry(alice, IN_CALL_WITH_AUDIO), user_entry(bob, IN_CALL_WITH_AUDIO)]
        await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)
        await alice.publish(speech("hello there, this is alice speaking", tmp_path, voice="en-us"))
        await bob.publish(
            speech("good morning, bob here with the weather", tmp_path, voice="en-gb")
        )
        services = Services(rooms=rooms, nextcloud=nextcloud)
        async with (
            running_exapp(settings, services) as url,
            httpx.AsyncClient(base_url=url, headers=appapi_headers()) as http,
        ):
            french = {"roomToken": room, "ncSessionId": "nc-alice2", "enable": True,
                      "langId": "en", "translationTargetLangId": "fr"}  # fmt: skip
            plain = {"roomToken": room, "ncSessionId": "nc-bob2", "enable": True, "langId": "en"}
            for body in (french, plain):
                response = await http.post("/api/v1/call/transcribe", json=body)
                assert (response.status_code, response.json()) == (
                    200,
                    {"message": "transcription enabled"},
                ), hpb.log_tail()
            await asyncio.to_thread(hpb.post_in_call, room, everyone, everyone)

            def french_from_both() -> bool:
                senders = {t["speakerSessionId"] for t in alice.transcripts()}
                return senders == {alice.session_id, bob.session_id}

            await until(
                french_from_both, 60, f"French finals for both; alice got {alice.transcripts()}"
            )
            await until(
                lambda: len([t for t in bob.transcripts() if t["final"]]) >= 2,
                30,
                f"bob's finals; bob got {bob.transcripts()}",
            )
    finally:
        await rooms.aclose()
        await nextcloud.aclose()
        await alice.close()
        await bob.close()
    english = [t for t in bob.transcripts() if t["final"]]
    in_french = alice.transcripts()
    assert all(t["final"] and t["langId"] == "fr" for t in in_french)
    assert {t["langId"] for t in bob.transcripts()} == {"en"}
    assert {t["message"] for t in in_french} <= {translated(t["message"], "fr") for t in english}
    assert all(t["message"].startswith("[fr] ") for t in in_french)
