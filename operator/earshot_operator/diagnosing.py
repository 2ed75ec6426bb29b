"""Why a gateway is not coming up, from its pods and Secrets: pure, no I/O.

A Deployment only says "unavailable" until its progress deadline (600 s) passes; the pods say
at once what is wrong: an image that cannot be pulled, a container whose Secret or ConfigMap is
missing, no node that fits, a process that keeps crashing. The operator puts that cause into the
resource's status and a Warning Event within seconds of the pod reporting it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from earshot_operator.settings import SecretKeyRef

#: Container waiting reasons that will not go away without a change by someone.
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
SECRET_MISSING = "SecretMissing"
UNSCHEDULABLE = "Unschedulable"


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


def from_pods(pods: Iterable[Mapping[str, Any]]) -> Diagnosis | None:
    """The first stuck pod's cause (newest pod first), or None if no pod is stuck."""
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    live.sort(key=lambda pod: str(pod["metadata"].get("creationTimestamp", "")), reverse=True)
    for pod in live:
        diagnosis = _pod(pod)
        if diagnosis is not None:
            return diagnosis
    return None


def _pod(pod: Mapping[str, Any]) -> Diagnosis | None:
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
    return None


def _last_exit(container: Mapping[str, Any]) -> str | None:
    terminated = (container.get("lastState") or {}).get("terminated")
    if not terminated:
        return None
    why = terminated.get("reason") or "Error"
    restarts = container.get("restartCount", 0)
    return f"last exit {why} (code {terminated.get('exitCode')}), restarted {restarts} times"
