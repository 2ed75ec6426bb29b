"""The Kubernetes Events the operator posts on its resources: pure, no I/O.

``kubectl describe`` then tells the story of a resource: Normal events for each step (objects
created, changed, drift repaired, the gateway Ready, the session Completed) and a Warning with
the pods' own cause (image pull, a missing Secret, no node fits, a crash loop) as soon as it
appears. An event is noted only when something changed, so drift checks repeat nothing.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from earshot_operator import resources, statuses

Manifest = dict[str, Any]


class Type(enum.StrEnum):
    """The two event types Kubernetes knows."""

    NORMAL = "Normal"
    WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class Note:
    """One event to post on a resource."""

    type: Type
    reason: str
    message: str


#: Phases whose arrival is a step worth an event of its own (Failed is a Warning).
_STEPS = {statuses.Phase.READY: "Ready", statuses.Phase.COMPLETED: "Completed"}


def notes(
    previous: Mapping[str, Any],
    observation: statuses.Observation,
    *,
    created: Iterable[str] = (),
    updated: Iterable[str] = (),
    drift: bool = False,
) -> list[Note]:
    """The events one reconciliation has to post.

    ``previous`` is the status before it; ``created`` and ``updated`` name the objects it
    created and patched ("Deployment/tsess-call-1"); in a drift check both were put back.
    """
    found: list[Note] = []
    steps = [("DriftRepaired", "put back", [*created, *updated])] if drift else []
    steps = steps or [("Created", "created", list(created)), ("Updated", "updated", list(updated))]
    for reason, verb, names in steps:
        if names:
            found.append(Note(Type.NORMAL, reason, f"{verb} " + ", ".join(sorted(names))))
    same_cause = (
        previous.get("reason") == observation.reason
        and previous.get("message") == observation.message
    )
    if observation.warning and not same_cause:
        found.append(Note(Type.WARNING, observation.reason, observation.message))
    elif previous.get("phase") != observation.phase and observation.phase in _STEPS:
        found.append(Note(Type.NORMAL, _STEPS[observation.phase], observation.message))
    return found


def build_event(
    body: Mapping[str, Any], note: Note, *, now: str, previous: Mapping[str, Any]
) -> Manifest:
    """A core/v1 Event about ``body``.

    Its name is a digest of the resource, the note and the ``previous`` status it follows:
    two reconciliations racing on the same change (a pod event and a drift check) post the same
    name, and the second is refused with 409 instead of doubling the event.
    """
    meta = body["metadata"]
    key = [meta["uid"], note.type, note.reason, note.message, *_state(previous)]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name'][:200]}.{digest}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": str(note.type),
        "reason": note.reason,
        "message": note.message[:1024],
        "source": {"component": resources.MANAGED_BY},
        "reportingComponent": resources.MANAGED_BY,
        "reportingInstance": resources.MANAGED_BY,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _state(status: Mapping[str, Any]) -> list[str]:
    return [
        str(status.get(key, "")) for key in ("phase", "reason", "message", "observedGeneration")
    ]
