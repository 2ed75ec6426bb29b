"""What a room's gateway reads from its TalkRoom and writes into its status: pure parts."""

from __future__ import annotations

from typing import Any

from earshot.gateways.talk.attendance import Report, State, status_patch
from earshot.gateways.talk.ownroom import Wish

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
