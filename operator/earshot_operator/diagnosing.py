"""Why a gateway is not coming up, from its pods and Secrets: pure, no I/O.

A Deployment only says "unavailable" until its progress deadline (600 s) passes; the pods say
at once what is wrong: an image that cannot be pulled, a container whose Secret or ConfigMap is
missing, no node that fits, a process that keeps crashing. The operator puts that cause into the
resource's status and a Warning Event within seconds of the pod reporting it.

The same reading serves a gateway pool (:func:`from_pool`): a session placed on a pool has no
pod of its own, so what its pool's Deployment and pods say is what its status says.

A crashing container is ``CrashLoopBackOff`` only while the kubelet waits to restart it; between
two back-offs it runs (not Ready) or has just exited. Read literally, its pod would turn from
stuck to merely "starting" and back on every restart, and each turn re-reconciles every session
on the pool. So a container that is not Ready and last exited within :data:`CRASH_LOOP_WINDOW`
(the kubelet's back-off reset) stays ``CrashLoopBackOff`` for the whole loop; reading that needs
the time now, passed in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from earshot_operator.settings import Pool, SecretKeyRef

#: Container waiting reasons that will not go away without a change by someone.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ErrImageNeverPull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
#: How long after a container's last exit a restarted, not yet Ready container still counts as
#: crash-looping: the kubelet forgets a container's back-off once it has run this long (twice its
#: 5 minute maximum back-off), so a loop at the longest back-off still falls inside it.
CRASH_LOOP_WINDOW = timedelta(minutes=10)
SECRET_MISSING = "SecretMissing"
UNSCHEDULABLE = "Unschedulable"
POOL_MISSING = "PoolMissing"
POOL_UNAVAILABLE = "PoolUnavailable"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The cause of a gateway not being available: a Kubernetes-style reason and a sentence."""

    reason: str
    message: str


def from_secrets(
    wanted: Iterable[tuple[str, SecretKeyRef]], found: Mapping[str, Mapping[str, Any] | None]
) -> Diagnosis | None:
    """The first Secret (or key) the pods read but the namespace lacks; None if all are there.

    ``wanted`` pairs each environment variable with the Secret key it comes from; ``found`` maps
    each Secret name to the Secret, or None where it does not exist.
    """
    for env, ref in wanted:
        secret = found.get(ref.name)
        if secret is None:
            return Diagnosis(SECRET_MISSING, f'Secret "{ref.name}" not found (needed for {env})')
        if ref.key not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
            return Diagnosis(
                SECRET_MISSING, f'Secret "{ref.name}" has no key "{ref.key}" (needed for {env})'
            )
    return None


def from_pods(pods: Iterable[Mapping[str, Any]], *, now: datetime) -> Diagnosis | None:
    """The first stuck pod's cause (newest pod first), or None if no pod is stuck.

    ``now`` (timezone-aware) dates the containers' last exits (:data:`CRASH_LOOP_WINDOW`).
    """
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    live.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp", "")), reverse=True)
    for pod in live:
        diagnosis = _pod(pod, now=now)
        if diagnosis is not None:
            return diagnosis
    return None


def from_pool(
    pool: Pool,
    deployment: Mapping[str, Any] | None,
    *,
    pods: Iterable[Mapping[str, Any]],
    now: datetime,
) -> Diagnosis | None:
    """Why ``pool`` cannot take a stream; None while one of its gateways is Ready.

    One Ready gateway is enough: the pool's Service sends every connection to a Ready pod. With
    none, the cause is the Deployment's own failure (pods it may not create), else the first stuck
    pod's (``from_pods``), else that no gateway is Ready yet (starting, or scaled to zero).
    """
    where = f"gateway pool {pool.name}"
    if deployment is None:
        return Diagnosis(POOL_MISSING, f"{where}: Deployment {pool.deployment} not found")
    status = deployment.get("status") or {}
    if int(status.get("readyReplicas") or 0) >= 1:
        return None
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    where = f"{where} has no Ready gateway (0 of {wanted})"
    for condition in status.get("conditions") or ():
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            reason = condition.get("reason") or "ReplicaFailure"
            return Diagnosis(reason, f"{where}: {condition.get('message') or reason}")
    cause = from_pods(pods, now=now)
    if cause is not None:
        return Diagnosis(cause.reason, f"{where}: {cause.message}")
    return Diagnosis(POOL_UNAVAILABLE, where)


def _pod(pod: Mapping[str, Any], *, now: datetime) -> Diagnosis | None:
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    for condition in status.get("conditions") or ():
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == UNSCHEDULABLE:
            detail = condition.get("message") or "no node fits"
            return Diagnosis(UNSCHEDULABLE, f"pod {name} cannot be scheduled: {detail}")
    containers = [
        *(status.get("initContainerStatuses") or ()),
        *(status.get("containerStatuses") or ()),
    ]
    for container in containers:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_REASONS:
            detail = waiting.get("message") or _last_exit(container) or reason
            return Diagnosis(reason, f"container {container['name']} of pod {name}: {detail}")
    for container in containers:
        if not container.get("ready") and _exited_since(container, now - CRASH_LOOP_WINDOW):
            detail = f"restarting after a crash, {_last_exit(container)}"
            return Diagnosis(
                CRASH_LOOP_BACK_OFF, f"container {container['name']} of pod {name}: {detail}"
            )
    return None


def _exited_since(container: Mapping[str, Any], since: datetime) -> bool:
    """Whether the container has restarted and its last exit (or its exit now) is after ``since``."""
    if not container.get("restartCount"):
        return False
    state, last = container.get("state") or {}, container.get("lastState") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    finished = terminated.get("finishedAt")
    return isinstance(finished, str) and datetime.fromisoformat(finished) > since


def _last_exit(container: Mapping[str, Any]) -> str | None:
    state, last = container.get("state") or {}, container.get("lastState") or {}
    terminated = state.get("terminated") or last.get("terminated")
    if not terminated:
        return None
    why = terminated.get("reason") or "Error"
    restarts = container.get("restartCount", 0)
    return f"last exit {why} (code {terminated.get('exitCode')}), restarted {restarts} times"
