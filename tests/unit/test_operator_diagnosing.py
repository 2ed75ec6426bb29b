"""Why a gateway does not come up, read from its pods and Secrets; the events that say so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from earshot_operator import diagnosing, events, statuses
from earshot_operator.settings import SecretKeyRef

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
STORAGE = (
    ("EARSHOT_PARTIALS_URL", SecretKeyRef(name="earshot-storage", key="redis-url")),
    ("EARSHOT_SEGMENTS_URL", SecretKeyRef(name="earshot-storage", key="mysql-url")),
)


def _pod(name: str, *, created: str = "2026-01-01T00:00:00Z", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def _waiting(container: str, reason: str, message: str = "") -> dict[str, Any]:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {"name": container, "state": {"waiting": waiting}, "restartCount": 0}


def test_a_missing_storage_secret_is_named_with_the_variable_it_feeds() -> None:
    diagnosis = diagnosing.from_secrets(STORAGE, {"earshot-storage": None})
    assert diagnosis == diagnosing.Diagnosis(
        "SecretMissing", 'Secret "earshot-storage" not found (needed for EARSHOT_PARTIALS_URL)'
    )


def test_a_missing_key_is_named() -> None:
    secret = {"data": {"redis-url": "eA=="}}
    diagnosis = diagnosing.from_secrets(STORAGE, {"earshot-storage": secret})
    assert diagnosis is not None
    assert diagnosis.message == (
        'Secret "earshot-storage" has no key "mysql-url" (needed for EARSHOT_SEGMENTS_URL)'
    )


def test_present_secrets_are_no_diagnosis() -> None:
    secret = {"data": {"redis-url": "eA==", "mysql-url": "eA=="}}
    assert diagnosing.from_secrets(STORAGE, {"earshot-storage": secret}) is None


@pytest.mark.parametrize(
    "reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"]
)
def test_a_stuck_container_gives_its_waiting_reason_and_message(reason: str) -> None:
    pod = _pod("tsess-a-1", containerStatuses=[_waiting("gateway", reason, "the details")])
    assert diagnosing.from_pods([pod], now=NOW) == diagnosing.Diagnosis(
        reason, "container gateway of pod tsess-a-1: the details"
    )


def test_an_unschedulable_pod_says_why_no_node_fits() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
    }
    diagnosis = diagnosing.from_pods([_pod("p", conditions=[condition])], now=NOW)
    assert diagnosis == diagnosing.Diagnosis(
        "Unschedulable",
        "pod p cannot be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
    )


def test_a_crash_loop_reports_the_last_exit() -> None:
    status = _waiting("persister", "CrashLoopBackOff")
    status |= {"restartCount": 4, "lastState": {"terminated": {"reason": "Error", "exitCode": 3}}}
    diagnosis = diagnosing.from_pods([_pod("p", containerStatuses=[status])], now=NOW)
    assert diagnosis is not None
    assert diagnosis.message == (
        "container persister of pod p: last exit Error (code 3), restarted 4 times"
    )


def test_starting_and_terminating_pods_are_no_diagnosis() -> None:
    creating = _pod("new", containerStatuses=[_waiting("gateway", "ContainerCreating")])
    going = _pod("old", containerStatuses=[_waiting("gateway", "ImagePullBackOff")])
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    assert diagnosing.from_pods([creating, going], now=NOW) is None


def test_the_newest_pod_speaks_first() -> None:
    old = _pod(
        "old", created="2026-01-01T00:00:00Z", containerStatuses=[_waiting("g", "ErrImagePull")]
    )
    new = _pod(
        "new", created="2026-01-01T00:05:00Z", containerStatuses=[_waiting("g", "ImagePullBackOff")]
    )
    diagnosis = diagnosing.from_pods([old, new], now=NOW)
    assert diagnosis is not None
    assert diagnosis.reason == "ImagePullBackOff"


# --- the status and the events -----------------------------------------------------------------

PULL = diagnosing.Diagnosis("ImagePullBackOff", "container gateway of pod p: back-off")


def test_a_diagnosis_replaces_the_vague_waiting_reason() -> None:
    observation = statuses.observe({"metadata": {}, "status": {}}, active=True, diagnosis=PULL)
    assert (observation.phase, observation.reason, observation.warning) == (
        statuses.Phase.PROVISIONING,
        "ImagePullBackOff",
        True,
    )
    status = statuses.build_status(None, observation, generation=1, previous={}, now="t")
    assert (status["reason"], status["message"]) == (PULL.reason, PULL.message)


def test_a_diagnosis_is_one_warning_until_the_cause_changes() -> None:
    observation = statuses.observe({"metadata": {}, "status": {}}, active=True, diagnosis=PULL)
    first = events.notes({"phase": "Provisioning"}, observation)
    assert first == [events.Note(events.Type.WARNING, PULL.reason, PULL.message)]
    again = {"phase": "Provisioning", "reason": PULL.reason, "message": PULL.message}
    assert events.notes(again, observation) == []


def test_each_step_is_a_normal_event() -> None:
    waiting = statuses.observe(None, active=True)
    made = events.notes({}, waiting, created=["Service/tsess-a", "Deployment/tsess-a"])
    assert made == [
        events.Note(events.Type.NORMAL, "Created", "created Deployment/tsess-a, Service/tsess-a")
    ]
    repaired = events.notes(
        {"phase": "Pending"}, waiting, created=["Service/x"], updated=["ConfigMap/x"], drift=True
    )
    assert repaired == [
        events.Note(events.Type.NORMAL, "DriftRepaired", "put back ConfigMap/x, Service/x")
    ]
    ready = statuses.Observation(statuses.Phase.READY, "Available", "accepts", True)
    assert events.notes({"phase": "Provisioning"}, ready) == [
        events.Note(events.Type.NORMAL, "Ready", "accepts")
    ]
    assert events.notes({"phase": "Ready"}, ready) == []


def test_an_event_names_the_resource_it_is_about() -> None:
    body = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": "a", "namespace": "tel", "uid": "u-1"},
    }
    note = events.Note(events.Type.WARNING, "SecretMissing", "x" * 2000)
    event = events.build_event(body, note, now="2026-01-01T00:00:00Z", previous={})
    assert event["involvedObject"] == {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "name": "a",
        "namespace": "tel",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"], len(event["message"])) == (
        "Warning",
        "SecretMissing",
        1024,
    )
    assert event["metadata"]["namespace"] == "tel"
    assert event["metadata"]["name"].startswith("a.")


def test_the_same_change_gives_the_same_event_name_and_a_new_change_a_new_one() -> None:
    body = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": "a", "namespace": "tel", "uid": "u-1"},
    }
    note = events.Note(events.Type.WARNING, PULL.reason, PULL.message)
    before = {"phase": "Provisioning", "reason": "WaitingForPod"}

    def name(previous: dict[str, Any]) -> str:
        event = events.build_event(body, note, now="t", previous=previous)
        return str(event["metadata"]["name"])

    assert name(before) == name(dict(before))  # racing reconciliations: one name, one 409
    assert name(before) != name({"phase": "Provisioning", "reason": "SecretMissing"})
