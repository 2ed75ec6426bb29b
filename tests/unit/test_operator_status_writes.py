"""The operator's status write: onto the version it read, so another writer's report survives."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

from earshot_operator import reconciling, statuses
from earshot_operator.clients import ConflictError, KubeClient


def _talkroom(version: str, in_call: str) -> dict[str, Any]:
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {
            "name": "talk-r1",
            "namespace": "talk",
            "uid": "u1",
            "resourceVersion": version,
        },
        "status": {
            "phase": "Ready",
            "conditions": [{"type": "InCall", "status": "False", "reason": in_call}],
        },
    }


class _ApiServer:
    """Holds one TalkRoom; a status patch onto an older resourceVersion is refused with 409."""

    def __init__(self, stored: dict[str, Any]) -> None:
        self.stored = stored
        self.patches: list[Mapping[str, Any]] = []

    async def get(self, path: str, *, cached: bool = False) -> dict[str, Any]:
        return copy.deepcopy(self.stored)

    async def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.patches.append(body)
        version = body.get("metadata", {}).get("resourceVersion")
        if version != self.stored["metadata"]["resourceVersion"]:
            raise ConflictError(409, {"reason": "Conflict"})
        self.stored["status"].update(body["status"])
        return self.stored

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(body)  # the operator's Events


async def test_a_status_write_keeps_a_report_made_since_the_object_was_read() -> None:
    # The operator read the TalkRoom while its gateway was in the call; the gateway has since
    # written Left. Completing the room must not put the old InCall condition back.
    seen = _talkroom("1", in_call="InCall")
    server = _ApiServer(_talkroom("2", in_call="Left"))
    observation = statuses.Observation(
        statuses.Phase.COMPLETED, "Inactive", "the room was ended", False
    )

    await reconciling.write_status(
        cast(KubeClient, server), seen, gateway=None, observation=observation
    )

    [refused, written] = server.patches
    assert refused["metadata"] == {"resourceVersion": "1"}
    assert written["metadata"] == {"resourceVersion": "2"}
    in_call = [c for c in server.stored["status"]["conditions"] if c["type"] == "InCall"]
    assert [c["reason"] for c in in_call] == ["Left"]
    assert server.stored["status"]["phase"] == "Completed"
