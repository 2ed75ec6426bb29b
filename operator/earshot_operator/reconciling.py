"""Bring a resource's objects in line with its spec, and its status in line with its objects.

The only module (besides the handlers) that talks to the API server. Re-runs are idempotent: an
object that already matches is left untouched (no write, no new resourceVersion), so restarting
the operator changes nothing that is already right.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import secrets
from collections.abc import Mapping
from typing import Any

from earshot_operator import gateways, manifests, resources, specs, statuses
from earshot_operator.clients import ConflictError, KubeClient, path_of, path_of_object
from earshot_operator.settings import OperatorSettings


class Change(enum.Enum):
    """What ensuring one object did."""

    UNCHANGED = "unchanged"
    CREATED = "created"
    UPDATED = "updated"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one reconciliation: the phase written and how many objects changed."""

    kind: str
    namespace: str
    name: str
    phase: statuses.Phase
    changes: int


async def reconcile(
    client: KubeClient,
    body: Mapping[str, Any],
    *,
    settings: OperatorSettings,
    drift: bool = False,
) -> Outcome:
    """Create or correct the Secret, access objects (rooms), ConfigMap, Service and Deployment,
    then write the status.

    ``drift`` marks a periodic re-check: whatever it has to change counts as a drift repair.
    """
    try:
        gateway = gateways.build(body, settings)
    except specs.SpecError as error:
        observation = statuses.failed("InvalidSpec", str(error))
        return await write_status(client, body, gateway=None, observation=observation, changes=0)
    token = manifests.build_token_secret(gateway, token=secrets.token_urlsafe(32))
    wanted = [
        *manifests.build_access(gateway),
        manifests.build_configmap(gateway),
        manifests.build_service(gateway, settings=settings),
        manifests.build_deployment(gateway, settings=settings),
    ]
    changes = [(await ensure(client, token, update=False))[0]]
    deployment: Mapping[str, Any] | None = None
    for manifest in wanted:
        change, deployment = await ensure(client, manifest)
        changes.append(change)
    observation = statuses.with_call(
        statuses.observe(deployment, active=gateway.replicas > 0), body
    )
    changed = sum(change is not Change.UNCHANGED for change in changes)
    return await write_status(
        client, body, gateway=gateway, observation=observation, changes=changed, drift=drift
    )


async def refresh_status(
    client: KubeClient, deployment: Mapping[str, Any], *, settings: OperatorSettings
) -> Outcome | None:
    """Rewrite the owner's status after its Deployment changed (None: no earshot owner)."""
    owner_ref = next(
        (
            ref
            for ref in deployment["metadata"].get("ownerReferences") or ()
            if ref.get("apiVersion") == resources.API_VERSION and ref.get("kind") in resources.KINDS
        ),
        None,
    )
    if owner_ref is None:
        return None
    namespace = deployment["metadata"]["namespace"]
    path = path_of(
        resources.API_VERSION, owner_ref["kind"], namespace=namespace, name=owner_ref["name"]
    )
    body = await client.get(path)
    if body is None or body["metadata"]["uid"] != owner_ref["uid"]:
        return None
    try:
        gateway = gateways.build(body, settings)
    except specs.SpecError:
        return None  # the reconcile of that spec already reported it Failed
    observation = statuses.with_call(
        statuses.observe(deployment, active=gateway.replicas > 0), body
    )
    return await write_status(client, body, gateway=gateway, observation=observation, changes=0)


async def ensure(
    client: KubeClient, wanted: Mapping[str, Any], *, update: bool = True
) -> tuple[Change, dict[str, Any]]:
    """Create ``wanted`` if missing; patch it if ``update`` and it differs; else leave it."""
    path = path_of_object(wanted)
    # the watch cache is enough: a stale "missing" ends in a 409 and a fresh read below, a
    # stale "matches" is corrected by the next drift check
    actual = await client.get(path, cached=True)
    if actual is None:
        try:
            return Change.CREATED, await client.create(wanted)
        except ConflictError:  # created meanwhile (another handler, a restart): compare it
            actual = await client.get(path)
            if actual is None:
                raise
    if not update or contains(actual, wanted):
        return Change.UNCHANGED, actual
    return Change.UPDATED, await client.patch(path, merge_patch(actual, wanted))


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` holds every value of ``wanted`` (the server adds defaults, not us)."""
    if isinstance(wanted, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return bool(actual == wanted)


def merge_patch(actual: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch to ``wanted`` that also drops ConfigMap keys no longer wanted."""
    patch = dict(wanted)
    if "data" in wanted:
        stale = set(actual.get("data") or {}) - set(wanted["data"])
        patch["data"] = {**wanted["data"], **dict.fromkeys(stale)}
    return patch


async def write_status(
    client: KubeClient,
    body: Mapping[str, Any],
    *,
    gateway: gateways.Gateway | None,
    observation: statuses.Observation,
    changes: int,
    drift: bool = False,
) -> Outcome:
    """Patch the status subresource if anything in it differs; count changing reconciles."""
    previous = body.get("status") or {}
    wanted = statuses.build_status(
        gateway,
        observation,
        generation=int(body["metadata"].get("generation", 1)),
        previous=previous,
        now=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    patch = statuses.status_patch(previous, wanted)
    if changes:
        counters = previous.get("counters") or {}
        patch["counters"] = {"reconciles": int(counters.get("reconciles", 0)) + 1}
        if drift:
            patch["counters"]["driftRepairs"] = int(counters.get("driftRepairs", 0)) + changes
    if patch:
        await client.patch(path_of_object(body, subresource="status"), {"status": patch})
    meta = body["metadata"]
    return Outcome(body["kind"], meta["namespace"], meta["name"], observation.phase, changes)
