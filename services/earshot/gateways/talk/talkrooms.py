"""TalkRoom resources (group earshot.dev, v1alpha1): the cluster path of a transcription request.

In a cluster the ExApp does not join calls itself: a request creates or updates the room's TalkRoom
and the operator runs the room's gateway. :class:`TalkRoomStore` is the port; :class:`KubernetesTalkRooms`
implements it with plain HTTP against the API server (service-account token, merge patches).
The caption targets travel in an annotation: the CRD's spec describes the room, not who watches it.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from earshot.gateways.talk import kubeapi
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.kubeapi import ClusterError

GROUP = "earshot.dev"
VERSION = "v1alpha1"
KIND = "TalkRoom"
PLURAL = "talkrooms"
TARGETS_ANNOTATION = "earshot.dev/caption-targets"

__all__ = ["ClusterError", "KubernetesTalkRooms", "NotAccepted", "TalkRoomSpec", "TalkRoomStore"]
_ACCEPT_POLL_SECONDS = 0.2


class NotAccepted(Exception):
    """The operator refused the TalkRoom, or did not take it in time."""


@dataclass(frozen=True, slots=True)
class TalkRoomSpec:
    """What a transcription request asks of the cluster."""

    room_token: str
    hpb_url: str
    nextcloud_url: str
    internal_secret_name: str
    #: The languages offered, in the ExApp's order (its first is the default).
    languages: tuple[str, ...]
    engine: str
    active: bool = True
    #: The caption language the request asks for (Talk's ``langId``): put first in
    #: ``spec.languages``. None keeps the room's language (the default for a new room).
    language: str | None = None

    def ordered_languages(self) -> list[str]:
        """``languages`` with :attr:`language` first."""
        first = self.language
        if first is None:
            return list(self.languages)
        return [first, *(code for code in self.languages if code != first)]


def resource_name(room_token: str) -> str:
    """A DNS-1123 name for a room token (tokens are short alphanumeric strings)."""
    cleaned = re.sub(r"[^a-z0-9-]", "-", room_token.lower()).strip("-")
    return f"talk-{cleaned}"[:63].rstrip("-")


def build_talkroom(spec: TalkRoomSpec, *, namespace: str, targets: list[str]) -> dict[str, Any]:
    """The TalkRoom manifest of a request."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": resource_name(spec.room_token),
            "namespace": namespace,
            "annotations": {TARGETS_ANNOTATION: ",".join(sorted(targets))},
        },
        "spec": {
            "roomToken": spec.room_token,
            "hpbUrl": spec.hpb_url,
            "nextcloudUrl": spec.nextcloud_url,
            "internalSecretRef": {"name": spec.internal_secret_name},
            "languages": spec.ordered_languages(),
            "engine": spec.engine,
            "active": spec.active,
        },
    }


class TalkRoomStore(Protocol):
    """Where transcription requests become TalkRooms."""

    async def request(self, spec: TalkRoomSpec, *, session: str, enable: bool) -> None:
        """Create or update the room's TalkRoom, adding or removing one caption target; the
        room's languages change only when ``spec.language`` is set."""
        ...

    async def change(self, room_token: str, *, language: str | None, active: bool | None) -> bool:
        """Put ``language`` first and/or set ``active``; False when the room has no TalkRoom."""
        ...

    async def wait_accepted(self, room_token: str, *, within: float) -> None:
        """Return once the operator has seen the room's current spec (or the room has none).

        Raises:
            NotAccepted: the operator refused the spec, or did not take it ``within`` seconds.
            ClusterError: the API server failed a request.
        """
        ...

    async def states(self) -> list[dict[str, Any]]:
        """What every TalkRoom of the namespace reports: phase and the call's state."""
        ...


class KubernetesTalkRooms:
    """TalkRooms through the Kubernetes API (in-cluster credentials by default)."""

    def __init__(self, http: httpx.AsyncClient, *, namespace: str) -> None:
        self._http = http
        self._namespace = namespace

    @classmethod
    def in_cluster(cls, settings: TalkSettings) -> KubernetesTalkRooms:
        """A client with the pod's service account (token and CA mounted by Kubernetes).

        Raises:
            ClusterError: the service account's files cannot be read.
        """
        return cls(kubeapi.in_cluster_http(settings), namespace=settings.namespace)

    async def request(self, spec: TalkRoomSpec, *, session: str, enable: bool) -> None:
        """Create the TalkRoom or merge-patch it; the last target off makes it inactive.

        A request without a language leaves ``spec.languages`` as it is: the room keeps the
        language it was switched to (as a room the ExApp joins itself does).
        """
        name = resource_name(spec.room_token)
        url = self._url()
        current = await self._http.get(f"{url}/{name}")
        if current.status_code == httpx.codes.NOT_FOUND:
            if not enable:
                return
            body = build_talkroom(spec, namespace=self._namespace, targets=[session])
            _raise_for(await self._http.post(url, json=body))
            return
        _raise_for(current)
        annotations = current.json().get("metadata", {}).get("annotations") or {}
        targets = {t for t in annotations.get(TARGETS_ANNOTATION, "").split(",") if t}
        targets = targets | {session} if enable else targets - {session}
        body = build_talkroom(
            TalkRoomSpec(**{**_fields(spec), "active": bool(targets)}),
            namespace=self._namespace,
            targets=sorted(targets),
        )
        if spec.language is None:
            del body["spec"]["languages"]
        patch = {"metadata": {"annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
        response = await self._http.patch(
            f"{url}/{name}", json=patch, headers={"Content-Type": "application/merge-patch+json"}
        )
        _raise_for(response)

    async def change(self, room_token: str, *, language: str | None, active: bool | None) -> bool:
        """Merge-patch the TalkRoom's languages (``language`` first) and ``active``."""
        url = self._url(resource_name(room_token))
        current = await self._http.get(url)
        if current.status_code == httpx.codes.NOT_FOUND:
            return False
        _raise_for(current)
        spec: dict[str, Any] = {}
        if language is not None:
            offered = current.json().get("spec", {}).get("languages", [])
            spec["languages"] = [language, *(code for code in offered if code != language)]
        if active is not None:
            spec["active"] = active
        headers = {"Content-Type": "application/merge-patch+json"}
        _raise_for(await self._http.patch(url, json={"spec": spec}, headers=headers))
        return True

    async def wait_accepted(self, room_token: str, *, within: float) -> None:
        """Poll the TalkRoom until its status describes its current generation.

        Only a spec change makes a new generation: a request that only adds a caption target
        (an annotation) to a room the operator already runs is accepted at once.
        """
        url = self._url(resource_name(room_token))
        deadline = time.monotonic() + within
        while True:
            current = await self._http.get(url)
            if current.status_code == httpx.codes.NOT_FOUND:
                return
            _raise_for(current)
            body = current.json()
            status = body.get("status") or {}
            generation = int(body.get("metadata", {}).get("generation", 1))
            if int(status.get("observedGeneration", 0)) >= generation:
                if status.get("phase") == "Failed":
                    raise NotAccepted(
                        f"the operator refused TalkRoom {body['metadata']['name']}: "
                        f"{status.get('message', '')}"
                    )
                return
            if time.monotonic() >= deadline:
                raise NotAccepted(
                    f"the operator did not accept TalkRoom {body['metadata']['name']} "
                    f"within {within:g} s"
                )
            await asyncio.sleep(_ACCEPT_POLL_SECONDS)

    async def states(self) -> list[dict[str, Any]]:
        """Each TalkRoom's token, phase and call state (``status.room``, written by its gateway)."""
        response = await self._http.get(self._url())
        _raise_for(response)
        return [describe(item) for item in response.json().get("items", [])]

    def _url(self, name: str = "") -> str:
        collection = f"/apis/{GROUP}/{VERSION}/namespaces/{self._namespace}/{PLURAL}"
        return f"{collection}/{name}" if name else collection

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()


def describe(body: dict[str, Any]) -> dict[str, Any]:
    """The status endpoint's view of one TalkRoom."""
    status = body.get("status") or {}
    room = status.get("room") or {}
    annotations = body.get("metadata", {}).get("annotations") or {}
    return {
        "roomToken": body.get("spec", {}).get("roomToken", ""),
        "talkRoom": body.get("metadata", {}).get("name", ""),
        "active": bool(body.get("spec", {}).get("active", True)),
        "phase": status.get("phase", ""),
        "state": room.get("state", ""),
        "speakers": int(room.get("speakers", 0)),
        "targets": len([t for t in annotations.get(TARGETS_ANNOTATION, "").split(",") if t]),
        "message": room.get("message") or status.get("message", ""),
    }


def _fields(spec: TalkRoomSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in TalkRoomSpec.__slots__}


_raise_for = kubeapi.raise_for
