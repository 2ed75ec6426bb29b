"""What a room's gateway reads from its TalkRoom and writes into its status: pure parts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from earshot.gateways.talk.attendance import Attendance, Report, State, status_patch
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.ownroom import OwnTalkRoom, Wish

OPERATORS = [{"type": "Ready", "status": "True", "reason": "Available", "message": "ok"}]


def _talkroom(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "talk-r1", "annotations": annotations},
        "spec": {"roomToken": "r1", **spec},
    }


def test_the_wish_is_the_targets_annotation_the_first_language_and_active() -> None:
    body = _talkroom(
        {"earshot.dev/caption-targets": "nc-b,nc-a,"}, languages=["fr", "en"], active=True
    )
    assert Wish.of(body) == Wish(frozenset({"nc-a", "nc-b"}), "fr", active=True)


def test_a_talkroom_without_annotation_wants_no_captions_in_the_default_language() -> None:
    assert Wish.of(_talkroom()) == Wish(frozenset(), "en", active=True)
    assert Wish.of(_talkroom(active=False)).active is False


def test_a_report_writes_the_room_and_the_incall_condition_and_keeps_the_operators() -> None:
    report = Report(State.IN_CALL, "in the call with 2 speakers", speakers=2, targets=1)
    patch = status_patch(report, {"conditions": OPERATORS}, generation=3, at="T1")
    assert patch["room"] == {
        "state": "InCall",
        "speakers": 2,
        "targets": 1,
        "message": "in the call with 2 speakers",
        "lastTransitionTime": "T1",
    }
    assert patch["conditions"] == [
        *OPERATORS,
        {
            "type": "InCall",
            "status": "True",
            "reason": "InCall",
            "message": "in the call with 2 speakers",
            "observedGeneration": 3,
            "lastTransitionTime": "T1",
        },
    ]


def test_an_unchanged_report_writes_nothing() -> None:
    report = Report(State.IDLE, "in the call, nobody speaks")
    written = status_patch(report, {}, generation=1, at="T1")
    assert status_patch(report, written, generation=1, at="T2") == {}


def test_more_speakers_keep_the_transition_time_and_leaving_moves_it() -> None:
    first = status_patch(Report(State.IN_CALL, "1", speakers=1), {}, generation=1, at="T1")
    more = status_patch(Report(State.IN_CALL, "2", speakers=2), first, generation=1, at="T2")
    left = status_patch(
        Report(State.LEFT, "left the call: the call ended"), more, generation=1, at="T3"
    )
    assert more["room"]["lastTransitionTime"] == "T1"
    assert more["conditions"][0]["lastTransitionTime"] == "T1"
    assert left["room"]["lastTransitionTime"] == "T3"
    assert (left["conditions"][0]["status"], left["conditions"][0]["lastTransitionTime"]) == (
        "False",
        "T3",
    )


def test_only_a_joined_gateway_is_ready() -> None:
    ready = {state for state in State if Report(state, "").joined}
    assert ready == {State.IN_CALL, State.IDLE}


class _CallOf:
    """Stands in for the gateway's Rooms: in the call of ``token`` until it leaves; the first
    leave can be held, as when SIGTERM comes while the gateway is leaving."""

    def __init__(self, token: str, *, hold: bool) -> None:
        self.token: str | None = token
        self.hold = hold
        self.left: list[str] = []
        self.leaving = asyncio.Event()

    def room(self, token: str) -> SimpleNamespace | None:
        # In the call, nobody speaking yet, nobody wanting captions.
        wanted = SimpleNamespace(wanted=frozenset())
        return (
            SimpleNamespace(speakers={}, targets=wanted, lang="en") if token == self.token else None
        )

    async def leave(self, token: str) -> None:
        self.left.append(token)
        self.leaving.set()
        if self.hold:
            self.hold = False
            await asyncio.Event().wait()
        self.token = None


def _api_server(
    body: dict[str, Any], written: list[dict[str, Any]], wrote: asyncio.Event
) -> httpx.AsyncClient:
    """An API server that holds one TalkRoom and records each status patch and Event."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            await asyncio.Event().wait()  # no change to the TalkRoom: the watch stays open
        if request.method == "GET":
            return httpx.Response(200, json=body)
        written.append({"path": request.url.path, **json.loads(request.content)})
        wrote.set()
        return httpx.Response(201 if request.method == "POST" else 200, json=body)

    return httpx.AsyncClient(base_url="https://api", transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    ("active", "why"), [(False, "the TalkRoom is inactive"), (True, "the room gateway stopped")]
)
async def test_a_stopping_gateway_leaves_the_call_and_says_left(active: bool, why: str) -> None:
    # The operator stops the gateway as soon as its TalkRoom is set inactive: the attending task
    # is cancelled before it could say so, and nothing else would ever write that it left.
    body = _talkroom(active=active)
    body["metadata"].update(namespace="talk", uid="u1", resourceVersion="7", generation=2)
    written: list[dict[str, Any]] = []
    wrote = asyncio.Event()
    call = _CallOf("r1", hold=not active)
    settings = TalkSettings(
        hpb_url="http://hpb", internal_secret="s", room_token="r1", talkroom_name="talk-r1"
    )
    async with _api_server(body, written, wrote) as http:
        talkroom = OwnTalkRoom(http, namespace="talk", name="talk-r1")
        attendance = Attendance(settings, cast(Rooms, call), talkroom)
        following = asyncio.create_task(attendance.run())
        # Stopped while leaving (inactive) or while in the call, before the status says Left.
        async with asyncio.timeout(10):
            await (wrote if active else call.leaving).wait()
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        assert not [w for w in written if w["path"].endswith("/status") and "Left" in str(w)]
        call.left.clear()
        written.clear()

        await attendance.leave_and_report()

    assert call.left == ["r1"]
    [patch, event] = written
    assert patch["status"]["room"]["state"] == "Left"
    assert patch["status"]["room"]["message"] == f"left the call: {why}"
    assert (event["path"], event["reason"]) == ("/api/v1/namespaces/talk/events", "Left")


async def test_left_is_written_again_when_the_talkroom_changed_meanwhile() -> None:
    # The operator's own status write races the stopping gateway's: its first Left patch carries
    # an old resourceVersion and gets 409; it reads the TalkRoom again and writes Left after all,
    # and the Event follows the status, never ahead of it.
    body = _talkroom(active=False)
    body["metadata"].update(namespace="talk", uid="u1", resourceVersion="7", generation=2)
    requests: list[str] = []
    conflicts = iter([True])

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            await asyncio.Event().wait()
        requests.append(request.method)
        if request.method == "PATCH" and next(conflicts, False):
            return httpx.Response(409, json={"reason": "Conflict"})
        return httpx.Response(200, json=body)

    settings = TalkSettings(
        hpb_url="http://hpb", internal_secret="s", room_token="r1", talkroom_name="talk-r1"
    )
    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(base_url="https://api", transport=transport) as http:
        talkroom = OwnTalkRoom(http, namespace="talk", name="talk-r1")
        call = _CallOf("r1", hold=True)
        attendance = Attendance(settings, cast(Rooms, call), talkroom)
        following = asyncio.create_task(attendance.run())
        async with asyncio.timeout(10):
            await call.leaving.wait()
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        requests.clear()

        await attendance.leave_and_report()

    assert requests == ["PATCH", "GET", "PATCH", "POST"]


class _Followed:
    """Stands in for the gateway's Rooms in a call: records each change the attendance asks for."""

    def __init__(self) -> None:
        self.asked: list[tuple[object, ...]] = []
        self.lang: str | None = None
        self.wanted: set[str] = set()
        self.changed = asyncio.Event()

    def room(self, token: str) -> SimpleNamespace | None:
        if self.lang is None:
            return None
        targets = SimpleNamespace(wanted=frozenset(self.wanted))
        return SimpleNamespace(speakers={"hpb-a": object()}, targets=targets, lang=self.lang)

    async def transcribe(self, token: str, target: str, *, enable: bool, lang: str | None) -> None:
        self.asked.append(("transcribe", target, enable, lang))
        if self.lang is None:
            self.lang = lang or "en"  # joined the call
        if enable:
            self.wanted.add(target)
        else:
            self.wanted.discard(target)
        self.changed.set()

    def set_language(self, token: str, lang: str) -> None:
        self.asked.append(("set_language", lang))
        self.lang = lang
        self.changed.set()

    async def until(self, count: int) -> list[tuple[object, ...]]:
        """The changes asked for, once there are ``count`` of them."""
        async with asyncio.timeout(10):
            while len(self.asked) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.asked


class _Watched(httpx.AsyncByteStream):
    """A watch on one TalkRoom: each body put into ``changes`` arrives as a MODIFIED event."""

    def __init__(self, changes: asyncio.Queue[dict[str, Any]]) -> None:
        self.changes = changes

    async def __aiter__(self) -> Any:
        while True:
            body = await self.changes.get()
            yield (json.dumps({"type": "MODIFIED", "object": body}) + "\n").encode()


def _wanting(targets: str, languages: list[str], version: int) -> dict[str, Any]:
    body = _talkroom({"earshot.dev/caption-targets": targets}, languages=languages, active=True)
    body["metadata"].update(namespace="talk", uid="u1", resourceVersion=str(version))
    return body


async def test_a_gateway_in_its_call_follows_targets_and_language_as_the_talkroom_changes() -> None:
    # The gateway is in the call for nc-a; then nc-b opts in, nc-a opts out (with another
    # language first), and the last one opts out while the room stays active.
    changes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    first = _wanting("nc-a", ["en", "zh"], 1)
    patched: list[dict[str, Any]] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            return httpx.Response(200, stream=_Watched(changes))
        if request.method == "PATCH":
            patched.append(json.loads(request.content)["status"]["room"])
        return httpx.Response(201 if request.method == "POST" else 200, json=first)

    settings = TalkSettings(
        hpb_url="http://hpb", internal_secret="s", room_token="r1", talkroom_name="talk-r1"
    )
    call = _Followed()
    async with httpx.AsyncClient(
        base_url="https://api", transport=httpx.MockTransport(answer)
    ) as http:
        attendance = Attendance(
            settings, cast(Rooms, call), OwnTalkRoom(http, namespace="talk", name="talk-r1")
        )
        following = asyncio.create_task(attendance.run())
        try:
            assert await call.until(1) == [("transcribe", "nc-a", True, "en")]  # joins
            await changes.put(_wanting("nc-a,nc-b", ["en", "zh"], 2))
            assert (await call.until(2))[1:] == [("transcribe", "nc-b", True, None)]
            await changes.put(_wanting("nc-b", ["zh", "en"], 3))
            assert (await call.until(4))[2:] == [
                ("transcribe", "nc-a", False, None),
                ("set_language", "zh"),
            ]
            await changes.put(_wanting("", ["zh", "en"], 4))
            # the last target off: the room's grace period makes it leave (Rooms, not shown here)
            assert (await call.until(5))[4:] == [("transcribe", "nc-b", False, None)]
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
    assert call.wanted == set()
    # each state was reported in the TalkRoom's status
    reported = [(room["targets"], room["message"]) for room in patched]
    for expected in [
        (1, "in the call with 1 speaker, captions in en for 1 participant"),
        (2, "in the call with 1 speaker, captions in en for 2 participants"),
        (1, "in the call with 1 speaker, captions in zh for 1 participant"),
    ]:
        assert expected in reported, reported


class _SlowToJoin(_Followed):
    """A call that takes until ``admitted`` is set to join."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted = asyncio.Event()

    async def transcribe(self, token: str, target: str, *, enable: bool, lang: str | None) -> None:
        await self.admitted.wait()
        await super().transcribe(token, target, enable=enable, lang=lang)


async def test_a_gateway_says_joining_while_it_joins_and_in_call_once_joined() -> None:
    written: list[dict[str, Any]] = []
    wrote = asyncio.Event()
    body = _wanting("nc-a", ["en"], 1)

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch"):
            await asyncio.Event().wait()  # no change to the TalkRoom: the watch stays open
        if request.method != "GET":
            written.append(json.loads(request.content))
            wrote.set()
        return httpx.Response(201 if request.method == "POST" else 200, json=body)

    settings = TalkSettings(
        hpb_url="http://hpb", internal_secret="s", room_token="r1", talkroom_name="talk-r1"
    )
    call = _SlowToJoin()
    async with httpx.AsyncClient(
        base_url="https://api", transport=httpx.MockTransport(answer)
    ) as http:
        attendance = Attendance(
            settings, cast(Rooms, call), OwnTalkRoom(http, namespace="talk", name="talk-r1")
        )
        following = asyncio.create_task(attendance.run())
        try:
            async with asyncio.timeout(10):
                while "Joining" not in [w.get("reason") for w in written]:
                    wrote.clear()
                    await wrote.wait()
            assert attendance.report.state is State.JOINING
            assert (
                not attendance.report.joined
            )  # /ready answers 503 (tests/unit/test_talk_roomserving.py)
            [patch] = [w["status"] for w in written if "status" in w]
            assert [w["reason"] for w in written if "reason" in w] == ["Joining"]  # the Event
            assert patch["room"]["state"] == "Joining"
            assert patch["room"]["message"] == "joining room r1 through ws://hpb/spreed"
            condition = patch["conditions"][-1]
            assert (condition["type"], condition["status"], condition["reason"]) == (
                "InCall",
                "False",
                "Joining",
            )
            call.admitted.set()
            async with asyncio.timeout(10):
                while "InCall" not in [w.get("reason") for w in written]:
                    wrote.clear()
                    await wrote.wait()
            assert attendance.report.joined
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
