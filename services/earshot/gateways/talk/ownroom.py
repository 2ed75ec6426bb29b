"""A room gateway's own TalkRoom: read and watch that one object, write its status, post Events.

The gateway the operator runs for a TalkRoom learns who wants captions (the caption-targets
annotation the ExApp writes), in which language (``spec.languages[0]``) and whether to caption at
all (``spec.active``) from its TalkRoom, and reports the call's state back into it. Its role allows
exactly that: get/list/watch on that one TalkRoom (by name), patch on its status, create Events.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from earshot.gateways.talk import kubeapi, talkrooms
from earshot.gateways.talk.kubeapi import ClusterError

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
COMPONENT = "earshot-talk"


class TalkRoomGone(Exception):
    """The TalkRoom was deleted."""


@dataclass(frozen=True, slots=True)
class Wish:
    """What a TalkRoom asks of its gateway now."""

    targets: frozenset[str]
    language: str
    active: bool

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Wish:
        """Read a TalkRoom body (the API server has applied the CRD's defaults)."""
        annotations = body.get("metadata", {}).get("annotations") or {}
        raw = str(annotations.get(talkrooms.TARGETS_ANNOTATION, ""))
        spec = body.get("spec") or {}
        languages = spec.get("languages") or ["en"]
        return cls(
            targets=frozenset(t for t in raw.split(",") if t),
            language=str(languages[0]),
            active=bool(spec.get("active", True)),
        )


def now() -> str:
    """The current time as Kubernetes writes it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OwnTalkRoom:
    """The one TalkRoom a room gateway follows (its name and namespace come from the operator)."""

    def __init__(self, http: httpx.AsyncClient, *, namespace: str, name: str) -> None:
        self._http = http
        self.namespace = namespace
        self.name = name
        self._collection = (
            f"/apis/{talkrooms.GROUP}/{talkrooms.VERSION}/namespaces/{namespace}/{talkrooms.PLURAL}"
        )

    async def get(self) -> dict[str, Any]:
        """The TalkRoom now.

        Raises:
            TalkRoomGone: it does not exist.
            ClusterError: the API server failed the request.
        """
        response = await self._http.get(f"{self._collection}/{self.name}")
        if response.status_code == httpx.codes.NOT_FOUND:
            raise TalkRoomGone(f"TalkRoom {self.namespace}/{self.name} does not exist")
        kubeapi.raise_for(response)
        body: dict[str, Any] = response.json()
        return body

    async def watch(self, resource_version: str) -> AsyncIterator[dict[str, Any]]:
        """Each new state of the TalkRoom after ``resource_version``, until the server ends the watch.

        Raises:
            TalkRoomGone: it was deleted.
            ClusterError: the watch failed or expired (410): read the object again.
        """
        params = {
            "watch": "true",
            "fieldSelector": f"metadata.name={self.name}",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(kubeapi.WATCH_SECONDS),
        }
        async with self._http.stream("GET", self._collection, params=params) as response:
            if response.is_error:
                await response.aread()
                kubeapi.raise_for(response)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, body = event.get("type"), event.get("object") or {}
                if kind == "DELETED":
                    raise TalkRoomGone(f"TalkRoom {self.namespace}/{self.name} was deleted")
                if kind == "ERROR":
                    raise ClusterError(f"the watch ended: {body.get('message', body)}")
                if kind in ("ADDED", "MODIFIED"):
                    yield body

    async def patch_status(
        self, status: Mapping[str, Any], *, resource_version: str
    ) -> dict[str, Any] | None:
        """Merge ``status`` into the TalkRoom's status: the TalkRoom after, or None when it changed
        meanwhile (409: the next state read from the watch is patched instead).

        Raises:
            ClusterError: the API server refused the patch for another reason.
        """
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status)}
        response = await self._http.patch(
            f"{self._collection}/{self.name}/status", json=body, headers=MERGE_PATCH
        )
        if response.status_code == httpx.codes.CONFLICT:
            return None
        kubeapi.raise_for(response)
        written: dict[str, Any] = response.json()
        return written

    async def post_event(
        self, *, uid: str, reason: str, message: str, warning: bool = False
    ) -> None:
        """Record a Kubernetes Event on the TalkRoom (``kubectl describe`` shows it).

        Raises:
            ClusterError: the API server refused it.
        """
        stamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": f"{talkrooms.GROUP}/{talkrooms.VERSION}",
                "kind": talkrooms.KIND,
                "name": self.name,
                "namespace": self.namespace,
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        response = await self._http.post(f"/api/v1/namespaces/{self.namespace}/events", json=event)
        kubeapi.raise_for(response)
