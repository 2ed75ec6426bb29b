"""The Kubernetes Events the operator posts on its resources: pure, no I/O.

``kubectl describe`` then tells the story of a resource: Normal events for each step (objects
created, changed, drift repaired, the gateway Ready, the session Completed) and a Warning with
the pods' own cause (image pull, a missing Secret, no node fits, a crash loop) as soon as it
appears. An event is noted only when something changed, so drift checks repeat nothing.
"""

from __future__ import annotations

import dataclasses
import enum
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


def build_event(body: Mapping[str, Any], note: Note, *, now: str) -> Manifest:
    """A core/v1 Event about ``body`` (named by the server from ``generateName``)."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
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
