"""Status of a custom resource from what its Deployment reports: pure, no I/O.

Phases: Pending (accepted, objects not yet in place), Provisioning (objects in place, pod not
available), Ready (the Deployment is available: the endpoint works), Failed (the Deployment gave
up, or the spec cannot be built), Completed (the resource was set inactive and scaled to zero).
A pooled session is Ready once registered while its pool has a Ready gateway, else Provisioning.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from earshot_operator import diagnosing
from earshot_operator.gateways import Gateway


class Phase(enum.StrEnum):
    """The phases a resource's status reports."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    FAILED = "Failed"
    COMPLETED = "Completed"


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the Deployment says, reduced to a phase and its reason."""

    phase: Phase
    reason: str
    message: str
    available: bool
    #: The reason is a fault someone has to act on (posted as a Warning event).
    warning: bool = False


def observe(
    deployment: Mapping[str, Any] | None,
    *,
    active: bool,
    diagnosis: diagnosing.Diagnosis | None = None,
) -> Observation:
    """Reduce a Deployment (or its absence) to a phase.

    ``diagnosis``, what the pods or Secrets say is wrong, replaces the Deployment's vaguer reason
    while the gateway is not available.
    """
    observation = _observe(deployment, active=active)
    if diagnosis is None or observation.phase not in (Phase.PROVISIONING, Phase.FAILED):
        return observation
    return dataclasses.replace(
        observation, reason=diagnosis.reason, message=diagnosis.message, warning=True
    )


def _observe(deployment: Mapping[str, Any] | None, *, active: bool) -> Observation:
    if deployment is None:
        return Observation(Phase.PENDING, "Creating", "the gateway is being created", False)
    status = deployment.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    progressing = conditions.get("Progressing") or {}
    if progressing.get("status") == "False" or _true(conditions.get("ReplicaFailure")):
        failure = conditions.get("ReplicaFailure") or progressing
        reason = failure.get("reason", "DeploymentFailed")
        return Observation(Phase.FAILED, reason, failure.get("message", reason), False, True)
    if not active:
        return Observation(Phase.COMPLETED, "Inactive", "the session was ended", False)
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
    available = _true(conditions.get("Available")) and status.get("availableReplicas", 0) >= 1
    if current and available and status.get("updatedReplicas", 0) >= 1:
        return Observation(Phase.READY, "Available", "the gateway accepts connections", True)
    return Observation(
        Phase.PROVISIONING, "WaitingForPod", "waiting for the gateway pod to be available", False
    )


def with_call(observation: Observation, body: Mapping[str, Any]) -> Observation:
    """A room whose pod is up but not Ready because its gateway is out of the call says so.

    A room's gateway is Ready only while in its call and writes why it is not into
    ``status.room`` (Left: the call ended, nobody wants captions; Failed: the signaling error):
    "waiting for the gateway pod" would hide that.
    """
    room = (body.get("status") or {}).get("room") or {}
    state = room.get("state")
    if observation.phase is not Phase.PROVISIONING or state not in ("Left", "Failed"):
        return observation
    reason = "NotInCall" if state == "Left" else "CallFailed"
    message = f"the gateway is not in its call: {room.get('message', state)}"
    return dataclasses.replace(observation, reason=reason, message=message)


def registered(pool: str, trouble: diagnosing.Diagnosis | None) -> Observation:
    """A registered pooled session: Ready while its pool has a Ready gateway (``trouble`` None).

    Otherwise it is Provisioning with the pool's cause as a Warning: it stays registered, so the
    pool admits it as soon as a gateway is Ready, but nothing can stream to it before that.
    """
    if trouble is None:
        message = f"registered with gateway pool {pool}: its gateways admit the session"
        return Observation(Phase.READY, "Registered", message, True)
    return Observation(Phase.PROVISIONING, trouble.reason, trouble.message, False, warning=True)


def session_id_taken(pool: str, session_id: str, holder: str) -> Observation:
    """A pooled session whose id another, older session holds on its pool: not registered."""
    message = (
        f"session id {session_id} is registered with gateway pool {pool} by TranscriptionSession "
        f"{holder}: give this session another spec.sessionId, or delete or deactivate that one "
        "(this session then takes the id)"
    )
    return Observation(Phase.PENDING, "SessionIdTaken", message, False, warning=True)


def failed(reason: str, message: str) -> Observation:
    """The observation for a resource whose spec the operator cannot build."""
    return Observation(Phase.FAILED, reason, message, False, True)


def build_status(
    gateway: Gateway | None,
    observation: Observation,
    *,
    generation: int,
    previous: Mapping[str, Any],
    now: str,
    placement: str | None = None,
    pooled: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status to write; transition times stay put for conditions that did not change.

    ``placement`` is a session's (``pools.Placement.name``); ``pooled`` what a pooled session's
    status says in place of a gateway's (endpoint, token Secret, registration).
    """
    made = gateway is not None or pooled is not None
    exists = made and observation.phase is not Phase.PENDING
    wanted = [
        ("Provisioned", exists, "ObjectsCreated" if exists else observation.reason),
        ("Available", observation.available, observation.reason),
        ("Ready", observation.phase is Phase.READY, observation.reason),
    ]
    old = {c.get("type"): c for c in previous.get("conditions") or ()}
    # Conditions of other writers (a room's gateway reports InCall) are kept as they are.
    theirs = [c for kind, c in old.items() if kind not in {kind for kind, _, _ in wanted}]
    status: dict[str, Any] = {
        "phase": str(observation.phase),
        "observedGeneration": generation,
        "reason": observation.reason,
        "message": observation.message,
        "conditions": [
            _condition(kind, ok, reason, observation.message, generation, old.get(kind), now)
            for kind, ok, reason in wanted
        ]
        + theirs,
    }
    if placement is not None:
        status["placement"] = placement
    if pooled is not None:
        status.update(pooled)
        return status
    if gateway is not None:
        status["tokenSecret"] = gateway.token_secret
    if observation.phase is Phase.READY and gateway is not None:
        status["endpoint"] = gateway.endpoint
        if gateway.external_endpoint is not None:
            status["externalEndpoint"] = gateway.external_endpoint
    return status


def status_patch(previous: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch taking ``previous`` to ``wanted`` for the keys the operator owns ({}: none).

    Counters are left alone: they are patched separately when something changes.
    """
    patch: dict[str, Any] = {k: v for k, v in wanted.items() if previous.get(k) != v}
    for key in ("endpoint", "externalEndpoint", "tokenSecret", "registration"):
        if key in previous and key not in wanted:
            patch[key] = None
    return patch


def _condition(
    kind: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    old: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    unchanged = old is not None and old.get("status") == status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged and old else now,
    }


def _true(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"
