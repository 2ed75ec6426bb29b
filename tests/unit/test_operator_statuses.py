"""Status phases and conditions derived from a Deployment: pure functions."""

from __future__ import annotations

from typing import Any

from earshot_operator import gateways, statuses
from earshot_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
BODY = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TranscriptionSession",
    "metadata": {"name": "s", "namespace": "n", "uid": "u", "generation": 2},
    "spec": {},
}


def _deployment(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


def _available(observed: int = 1) -> dict[str, Any]:
    return _deployment(
        observedGeneration=observed,
        availableReplicas=1,
        updatedReplicas=1,
        conditions=[{"type": "Available", "status": "True"}],
    )


def test_missing_deployment_is_pending() -> None:
    assert statuses.observe(None, active=True).phase is statuses.Phase.PENDING


def test_deployment_without_available_pod_is_provisioning() -> None:
    observation = statuses.observe(_deployment(observedGeneration=1), active=True)
    assert observation.phase is statuses.Phase.PROVISIONING


def test_available_deployment_is_ready() -> None:
    assert statuses.observe(_available(), active=True).phase is statuses.Phase.READY


def test_available_but_not_yet_rolled_deployment_is_still_provisioning() -> None:
    deployment = _available()
    deployment["metadata"]["generation"] = 2
    assert statuses.observe(deployment, active=True).phase is statuses.Phase.PROVISIONING


def test_deployment_past_its_progress_deadline_is_failed() -> None:
    deployment = _deployment(
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "took too long",
            }
        ]
    )
    observation = statuses.observe(deployment, active=True)
    assert (observation.phase, observation.reason) == (
        statuses.Phase.FAILED,
        "ProgressDeadlineExceeded",
    )


def test_inactive_resource_is_completed() -> None:
    assert statuses.observe(_deployment(), active=False).phase is statuses.Phase.COMPLETED


def test_ready_status_carries_the_endpoint_and_true_conditions() -> None:
    gateway = gateways.build(BODY, SETTINGS)
    observation = statuses.observe(_available(), active=True)
    status = statuses.build_status(gateway, observation, generation=2, previous={}, now="T1")
    assert status["phase"] == "Ready"
    assert status["endpoint"] == "ws://tsess-s.n.svc:8000/ws/transcribe/s"
    assert status["observedGeneration"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Provisioned": "True",
        "Available": "True",
        "Ready": "True",
    }


def test_unchanged_conditions_keep_their_transition_time() -> None:
    gateway = gateways.build(BODY, SETTINGS)
    observation = statuses.observe(_deployment(), active=True)
    first = statuses.build_status(gateway, observation, generation=2, previous={}, now="T1")
    second = statuses.build_status(gateway, observation, generation=2, previous=first, now="T2")
    assert second == first
    assert statuses.status_patch(first, second) == {}


def test_leaving_ready_removes_the_endpoint() -> None:
    gateway = gateways.build(BODY, SETTINGS)
    ready = statuses.build_status(
        gateway, statuses.observe(_available(), active=True), generation=2, previous={}, now="T1"
    )
    later = statuses.build_status(
        gateway,
        statuses.observe(_deployment(), active=True),
        generation=2,
        previous=ready,
        now="T2",
    )
    patch = statuses.status_patch(ready, later)
    assert patch["endpoint"] is None
    assert patch["phase"] == "Provisioning"
    ready_condition = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready_condition["lastTransitionTime"] == "T2"


def test_conditions_written_by_a_room_gateway_are_kept() -> None:
    gateway = gateways.build(BODY, SETTINGS)
    observation = statuses.observe(_available(), active=True)
    theirs = {"type": "InCall", "status": "True", "reason": "InCall", "message": "2 speakers"}
    first = statuses.build_status(gateway, observation, generation=2, previous={}, now="T1")
    previous = {**first, "conditions": [*first["conditions"], theirs]}
    second = statuses.build_status(gateway, observation, generation=2, previous=previous, now="T2")
    assert [c["type"] for c in second["conditions"]] == [
        "Provisioned",
        "Available",
        "Ready",
        "InCall",
    ]
    assert second["conditions"][-1] == theirs
    assert statuses.status_patch(previous, second) == {}


def test_a_room_pod_out_of_its_call_says_why_instead_of_waiting_for_the_pod() -> None:
    waiting = statuses.observe(_deployment(), active=True)
    left = {"status": {"room": {"state": "Left", "message": "left the call: the call ended"}}}
    failed = {"status": {"room": {"state": "Failed", "message": "cannot join: invalid_token"}}}
    in_call = {"status": {"room": {"state": "InCall", "message": "in the call"}}}
    assert statuses.with_call(waiting, left) == statuses.Observation(
        statuses.Phase.PROVISIONING,
        "NotInCall",
        "the gateway is not in its call: left the call: the call ended",
        False,
    )
    assert statuses.with_call(waiting, failed).reason == "CallFailed"
    assert statuses.with_call(waiting, in_call) == waiting
    ready = statuses.observe(_available(), active=True)
    assert statuses.with_call(ready, left) == ready
