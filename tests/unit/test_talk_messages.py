"""HPB wire formats: exact client message shapes and strict, precise parsing of server messages."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from earshot.events import Recognition
from earshot.gateways.talk import captions, messages


def test_hello_carries_internal_auth_with_the_hex_hmac_of_its_random() -> None:
    hello = messages.hello("2.0", secret="s3cret", backend="http://nc/backend", random="r" * 64)
    token = hmac.new(b"s3cret", b"r" * 64, hashlib.sha256).hexdigest()
    assert hello == {
        "type": "hello",
        "hello": {
            "version": "2.0",
            "auth": {
                "type": "internal",
                "params": {"random": "r" * 64, "token": token, "backend": "http://nc/backend"},
            },
        },
    }


def test_a_fresh_random_has_at_least_32_bytes_of_entropy_and_differs_each_time() -> None:
    first = messages.hello("2.0", secret="s", backend="b")["hello"]["auth"]["params"]["random"]
    second = messages.hello("2.0", secret="s", backend="b")["hello"]["auth"]["params"]["random"]
    assert len(bytes.fromhex(first)) >= 32
    assert first != second


def test_transcripts_go_to_one_session_with_the_speaker_and_room_type() -> None:
    message = messages.transcript("T", text="hi", final=True, lang="en", speaker="S")
    assert message == {
        "type": "message",
        "message": {
            "recipient": {"type": "session", "sessionid": "T"},
            "data": {
                "type": "transcript",
                "message": "hi",
                "final": True,
                "langId": "en",
                "speakerSessionId": "S",
                "roomType": "video",
            },
        },
    }


def test_requestoffer_answer_and_resume_have_the_protocol_shapes() -> None:
    assert messages.request_offer("S")["message"] == {
        "recipient": {"type": "session", "sessionid": "S"},
        "data": {"type": "requestoffer", "roomType": "video"},
    }
    data = messages.answer("S", sid="x", sdp="v=0", nick="earshot")["message"]["data"]
    assert data == {
        "to": "S",
        "type": "answer",
        "sid": "x",
        "roomType": "video",
        "payload": {"type": "answer", "sdp": "v=0", "nick": "earshot"},
    }
    assert messages.resume("2.0", "R") == {
        "type": "hello",
        "hello": {"version": "2.0", "resumeid": "R"},
    }
    assert messages.in_call(1) == {
        "type": "internal",
        "internal": {"type": "incall", "incall": {"incall": 1}},
    }
    assert messages.bye() == {"type": "bye", "bye": {}}


def test_participants_updates_keep_the_in_call_bits_and_internal_flags() -> None:
    raw = {
        "type": "event",
        "event": {
            "target": "participants",
            "type": "update",
            "update": {
                "roomid": "r",
                "users": [
                    {"sessionId": "a", "nextcloudSessionId": "na", "inCall": 3, "lastPing": 1},
                    {"sessionId": "b", "inCall": 1},
                    {"sessionId": "bot", "inCall": 1, "internal": True},
                ],
            },
        },
    }
    update = messages.parse(json.dumps(raw))
    assert isinstance(update, messages.ParticipantsUpdate)
    a, b, bot = update.users
    assert (a.speaks, a.nextcloud_session_id) == (True, "na")
    assert not b.speaks
    assert bot.internal


def test_the_call_ending_for_everyone_is_recognised() -> None:
    raw = {"type": "event", "event": {"target": "participants", "type": "update",
                                      "update": {"roomid": "r", "incall": 0, "all": True}}}  # fmt: skip
    assert messages.parse(json.dumps(raw)) == messages.ParticipantsUpdate("r", (), call_ended=True)


def test_room_joins_name_the_nextcloud_session_and_offers_name_their_publisher() -> None:
    joins = {"type": "event", "event": {"target": "room", "type": "join",
             "join": [{"sessionid": "h", "userid": "u", "roomsessionid": "n"}]}}  # fmt: skip
    assert messages.parse(json.dumps(joins)) == messages.RoomJoins((("h", "n"),))
    offer = {"type": "message", "message": {"sender": {"type": "session", "sessionid": "x"},
             "data": {"type": "offer", "from": "pub", "sid": "1", "payload": {"sdp": "v=0"}}}}  # fmt: skip
    assert messages.parse(json.dumps(offer)) == messages.Signal("pub", "offer", "1", {"sdp": "v=0"})


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"type": 5}',
        '{"type": "hello", "hello": {}}',
        '{"type": "error"}',
        '{"type": "message", "message": {"data": {"type": "offer", "payload": "x"}, "sender": {}}}',
        '{"type": "event", "event": {"target": "participants", "type": "update", "update": {"users": [{}]}}}',
    ],
)
def test_malformed_messages_raise_a_precise_error(raw: str) -> None:
    with pytest.raises(messages.MalformedMessage):
        messages.parse(raw)


def test_unknown_message_types_are_ignored_not_errors() -> None:
    assert messages.parse('{"type": "control", "control": {}}') == messages.Ignored("control")


def test_captions_route_to_resolved_targets_only() -> None:
    targets = captions.Targets()
    targets.enable("nc-a", on=True)
    targets.enable("nc-late", on=True)
    targets.learn("hpb-a", "nc-a")
    targets.learn("hpb-b", "nc-b")
    assert targets.sessions() == ["hpb-a"]
    routed = captions.route(
        Recognition("hi", True), speaker="hpb-b", targets=targets.sessions(), lang="en"
    )
    assert [m["message"]["recipient"]["sessionid"] for m in routed] == ["hpb-a"]
    assert captions.route(Recognition("", True), speaker="s", targets=["t"], lang="en") == []
    targets.forget("hpb-a")
    assert targets.sessions() == []
    assert targets  # nc-late still wants captions


def test_partials_are_throttled_and_finals_always_pass() -> None:
    throttle = captions.PartialThrottle(0.5)
    assert throttle.admit(Recognition("a", False), now=0.0)
    assert not throttle.admit(Recognition("ab", False), now=0.2)
    assert not throttle.admit(Recognition("a", False), now=0.9)  # unchanged text
    assert throttle.admit(Recognition("abc", False), now=0.9)
    assert throttle.admit(Recognition("abc", True), now=0.95)
    assert throttle.admit(Recognition("d", False), now=0.96)
