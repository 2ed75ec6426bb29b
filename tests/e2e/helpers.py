"""Helpers for e2e tests: resource bodies, waiting for the cluster, playing the kubelet."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from earshot_operator.clients import KubeClient, path_of

T = TypeVar("T")
API_VERSION = "earshot.dev/v1alpha1"
OWNED = (("v1", "Secret"), ("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "Deployment"))


def session_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A TranscriptionSession with the given spec fields."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TranscriptionSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"userId": "alice", **spec},
    }


def room_body(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A TalkRoom with the given spec fields over a complete default."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TalkRoom",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "roomToken": "abc123xy",
            "hpbUrl": "wss://hpb.example.com/standalone-signaling/spreed",
            "nextcloudUrl": "https://cloud.example.com",
            "internalSecretRef": {"name": "hpb"},
            **spec,
        },
    }


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 30.0, what: str = "condition"
) -> T:
    """Await ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)


async def get_owned(
    api: KubeClient, namespace: str, name: str, token_secret: str
) -> dict[str, dict[str, Any] | None]:
    """The Secret, ConfigMap, Service and Deployment of a gateway (None where missing)."""
    found: dict[str, dict[str, Any] | None] = {}
    for api_version, kind in OWNED:
        object_name = token_secret if kind == "Secret" else name
        found[kind] = await api.get(
            path_of(api_version, kind, namespace=namespace, name=object_name)
        )
    return found


async def resource(api: KubeClient, body: dict[str, Any]) -> dict[str, Any] | None:
    """The current state of a custom resource."""
    meta = body["metadata"]
    path = path_of(API_VERSION, body["kind"], namespace=meta["namespace"], name=meta["name"])
    return await api.get(path)


async def phase_is(api: KubeClient, body: dict[str, Any], phase: str) -> dict[str, Any] | None:
    """The resource if its status reached ``phase``, else None."""
    current = await resource(api, body)
    if current is not None and (current.get("status") or {}).get("phase") == phase:
        return current
    return None


async def list_items(
    api: KubeClient, path: str, *, selector: str | None = None
) -> list[dict[str, Any]]:
    """The items of a collection, optionally filtered by a label selector."""
    params = {"labelSelector": selector} if selector else None
    answer = await api.request("GET", path, params=params)
    items: list[dict[str, Any]] = answer["items"]
    return items


async def make_pods_ready(api: KubeClient, namespace: str, instance: str) -> int:
    """Play the kubelet: mark the gateway's pods Running and Ready (no kubelet runs here).

    Returns:
        How many pods were marked (0 while the ReplicaSet has not created one yet).
    """
    pods = await list_items(
        api,
        f"/api/v1/namespaces/{namespace}/pods",
        selector=f"app.kubernetes.io/instance={instance}",
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": kind, "status": "True", "lastTransitionTime": now}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    for pod in pods:
        containers = pod["spec"]["containers"]
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for c in containers
        ]
        status = {
            "phase": "Running",
            "conditions": conditions,
            "containerStatuses": statuses,
            "startTime": now,
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status"
        await api.patch(path, {"status": status})
    return len(pods)
