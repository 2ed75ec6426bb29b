"""Bring a resource's objects in line with its spec, and its status in line with its objects.

The only module (besides the handlers) that talks to the API server. Re-runs are idempotent: an
object that already matches is left untouched (no write, no new resourceVersion), so restarting
the operator changes nothing that is already right.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import enum
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from earshot_operator import (
    claiming,
    dataplane,
    diagnosing,
    events,
    gateways,
    manifests,
    pools,
    poolwatching,
    resources,
    specs,
    statuses,
)
from earshot_operator.clients import ApiError, ConflictError, KubeClient, path_of, path_of_object
from earshot_operator.settings import OperatorSettings, Pool

logger = logging.getLogger("earshot_operator.reconciling")


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
    pool_watch: poolwatching.PoolWatch,
    claims: claiming.SessionClaims,
    drift: bool = False,
) -> Outcome:
    """Create or correct the Secret, access objects (rooms), ConfigMap, Service and Deployment,
    then write the status; or, for a pooled session, its token and registration.

    ``drift`` marks a periodic re-check: whatever it has to change counts as a drift repair;
    ``pool_watch`` says whether a pooled session's pool can take a stream, ``claims`` which
    session holds each session id of a pool.
    """
    try:
        gateway = gateways.build(body, settings)
        placement = _placement(body, settings)
    except specs.SpecError as error:
        observation = statuses.failed("InvalidSpec", str(error))
        return await write_status(client, body, gateway=None, observation=observation)
    if placement is not None and placement.pool is not None:
        return await reconcile_pooled(
            client,
            body,
            gateway=gateway,
            pool=placement.pool,
            pool_watch=pool_watch,
            claims=claims,
            drift=drift,
        )
    token = manifests.build_token_secret(gateway, token=secrets.token_urlsafe(32))
    wanted = [
        *manifests.build_access(gateway),
        manifests.build_configmap(gateway),
        manifests.build_service(gateway, settings=settings),
    ]
    ingress = manifests.build_ingress(gateway, settings=settings)
    if ingress is not None:
        wanted.append(ingress)
    wanted.append(manifests.build_deployment(gateway, settings=settings))  # last: its status
    changes = [((await ensure_token(client, token, body))[0], token)]
    deployment: Mapping[str, Any] | None = None
    for manifest in wanted:
        change, deployment = await ensure(client, manifest)
        changes.append((change, manifest))
    observation = await observe(client, gateway, deployment, body)
    return await write_status(
        client,
        body,
        gateway=gateway,
        observation=observation,
        created=[_name_of(m) for change, m in changes if change is Change.CREATED],
        updated=[_name_of(m) for change, m in changes if change is Change.UPDATED],
        drift=drift,
        placement=None if placement is None else placement.name,
    )


def _placement(body: Mapping[str, Any], settings: OperatorSettings) -> pools.Placement | None:
    """A session's placement (None for a room)."""
    if body.get("kind") != resources.SESSION.kind:
        return None
    return pools.place(specs.parse_session(body), body, settings=settings)


async def reconcile_pooled(
    client: KubeClient,
    body: Mapping[str, Any],
    *,
    gateway: gateways.Gateway,
    pool: Pool,
    pool_watch: poolwatching.PoolWatch,
    claims: claiming.SessionClaims,
    drift: bool = False,
) -> Outcome:
    """Mint a pooled session's token and register it: no pod of its own, Ready at once while its
    pool has a Ready gateway; else Provisioning with why the pool has none.

    Inactive, the session is Completed and unregistered, so the pool's gateways end its stream.
    While an older session holds its session id on the pool it is Pending and unregistered.
    """
    spec = specs.parse_session(body)
    claimed = claiming.claim(pool, spec, body)
    created: list[str] = []
    token_secret: dict[str, Any] = {}
    token: str | None = None
    if spec.auth == "token":
        secret = manifests.build_token_secret(gateway, token=secrets.token_urlsafe(32))
        change, actual = await ensure_token(client, secret, body)
        if change is Change.CREATED:
            created.append(_name_of(secret))
        token = base64.b64decode(actual["data"][dataplane.TOKEN_KEY]).decode()
        token_secret["tokenSecret"] = gateway.token_secret
    while True:
        # The pool's loop may change its answer, or the session id change hands, and the
        # session be reconciled for it, while this status is on its way: this one would then
        # overwrite the newer, so it is written again.
        seen = (pool_watch.changes(pool), claims.changes)
        holder = claims.taken_from(claimed) if spec.active else None
        if holder is not None and not await _exists(client, holder):
            # its deletion was missed (a watch that re-listed tells none): the id is free
            claims.forget(holder.resource, holder.uid)
            continue
        pooled = dict(token_secret)
        if holder is not None:
            observation = statuses.session_id_taken(pool.name, spec.session_id, holder.resource)
        elif spec.active:
            pooled["endpoint"] = pools.endpoint(pool, spec)
            pooled["registration"] = pools.build_registration(pool, spec, token=token)
            observation = statuses.registered(pool.name, await pool_watch.diagnose(pool))
        else:
            observation = statuses.Observation(
                statuses.Phase.COMPLETED, "Inactive", "the session was ended", False
            )
        outcome = await write_status(
            client,
            body,
            gateway=gateway,
            observation=observation,
            created=created,
            drift=drift,
            placement=pools.Placement(pool).name,
            pooled=pooled,
        )
        if (pool_watch.changes(pool), claims.changes) == seen:
            return outcome
        created = []  # told by the first write


async def _exists(client: KubeClient, claim: claiming.Claim) -> bool:
    """Whether the session object that made ``claim`` still exists."""
    namespace, _, name = claim.resource.partition("/")
    path = path_of(resources.API_VERSION, resources.SESSION.kind, namespace=namespace, name=name)
    found = await client.get(path)
    return found is not None and (found.get("metadata") or {}).get("uid", "") == claim.uid


async def observe(
    client: KubeClient,
    gateway: gateways.Gateway,
    deployment: Mapping[str, Any] | None,
    body: Mapping[str, Any],
) -> statuses.Observation:
    """The phase from the Deployment; while it is not available, the cause from pods and Secrets."""
    active = gateway.replicas > 0
    observation = statuses.observe(deployment, active=active)
    if observation.phase in (statuses.Phase.PROVISIONING, statuses.Phase.FAILED):
        diagnosis = await diagnose(client, gateway)
        observation = statuses.observe(deployment, active=active, diagnosis=diagnosis)
    return statuses.with_call(observation, body)


async def diagnose(client: KubeClient, gateway: gateways.Gateway) -> diagnosing.Diagnosis | None:
    """Why the gateway is not available: a Secret it reads is missing, or a pod is stuck."""
    namespace = gateway.owner.namespace
    wanted = [(env, ref) for env, ref in gateway.secret_env if ref.name != gateway.token_secret]
    found = {
        ref.name: await client.get(
            path_of("v1", "Secret", namespace=namespace, name=ref.name), cached=True
        )
        for _, ref in wanted
    }
    diagnosis = diagnosing.from_secrets(wanted, found)
    if diagnosis is not None:
        return diagnosis
    pods = await client.request(
        "GET",
        path_of("v1", "Pod", namespace=namespace),
        params={"labelSelector": f"{resources.INSTANCE_LABEL}={gateway.name}"},
    )
    return diagnosing.from_pods(pods.get("items") or (), now=datetime.datetime.now(datetime.UTC))


def _name_of(manifest: Mapping[str, Any]) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


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
    observation = await observe(client, gateway, deployment, body)
    return await write_status(client, body, gateway=gateway, observation=observation)


async def refresh_from_pod(
    client: KubeClient, pod: Mapping[str, Any], *, settings: OperatorSettings
) -> Outcome | None:
    """Rewrite the status of the resource whose gateway pod changed (None: no such resource)."""
    name = (pod["metadata"].get("labels") or {}).get(resources.INSTANCE_LABEL)
    if not name:
        return None
    namespace = pod["metadata"]["namespace"]
    path = path_of("apps/v1", "Deployment", namespace=namespace, name=name)
    deployment = await client.get(path, cached=True)
    if deployment is None:
        return None
    return await refresh_status(client, deployment, settings=settings)


async def ensure_token(
    client: KubeClient, secret: Mapping[str, Any], body: Mapping[str, Any]
) -> tuple[Change, dict[str, Any]]:
    """Create the token Secret of ``body`` if missing, never change one that exists.

    A resource whose status names no token Secret yet is new: its Secret is created without
    reading first (a pooled session is Ready after this and its status write, so the read would be
    a third of its round trips); one that exists anyway (a restart between the two) ends in a 409
    and a read.
    """
    new = not (body.get("status") or {}).get("tokenSecret")
    return await ensure(client, secret, update=False, create_first=new)


async def ensure(
    client: KubeClient,
    wanted: Mapping[str, Any],
    *,
    update: bool = True,
    create_first: bool = False,
) -> tuple[Change, dict[str, Any]]:
    """Create ``wanted`` if missing; patch it if ``update`` and it differs; else leave it.

    ``create_first``: the object is most likely missing: create it without reading it first.
    """
    path = path_of_object(wanted)
    # the watch cache is enough: a stale "missing" ends in a 409 and a fresh read below, a
    # stale "matches" is corrected by the next drift check
    actual = None if create_first else await client.get(path, cached=True)
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


# How often a status write is tried again on a newer version of its object (409).
_STATUS_TRIES = 3


async def write_status(
    client: KubeClient,
    body: Mapping[str, Any],
    *,
    gateway: gateways.Gateway | None,
    observation: statuses.Observation,
    created: Sequence[str] = (),
    updated: Sequence[str] = (),
    drift: bool = False,
    placement: str | None = None,
    pooled: Mapping[str, Any] | None = None,
) -> Outcome:
    """Patch the status subresource if anything in it differs; count changing reconciles; post
    the events of what changed (``placement`` and ``pooled``: see ``statuses.build_status``)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    changes = len(created) + len(updated)
    current = body
    for attempt in range(1, _STATUS_TRIES + 1):
        previous = current.get("status") or {}
        wanted = statuses.build_status(
            gateway,
            observation,
            generation=int(body["metadata"].get("generation", 1)),
            previous=previous,
            now=now,
            placement=placement,
            pooled=pooled,
        )
        patch = statuses.status_patch(previous, wanted)
        if changes:
            counters = previous.get("counters") or {}
            patch["counters"] = {"reconciles": int(counters.get("reconciles", 0)) + 1}
            if drift:
                patch["counters"]["driftRepairs"] = int(counters.get("driftRepairs", 0)) + changes
        if not patch:
            break
        # The conditions list is written whole, keeping other writers' (a room gateway's InCall)
        # as this body shows them: only onto that very version, or a newer report is undone.
        version = current["metadata"].get("resourceVersion")
        precondition = {"metadata": {"resourceVersion": version}} if version else {}
        path = path_of_object(body, subresource="status")
        try:
            await client.patch(path, {**precondition, "status": patch})
            break
        except ConflictError:
            fresh = await client.get(path_of_object(body))
            if fresh is None or attempt == _STATUS_TRIES:
                raise
            current = fresh
    previous = body.get("status") or {}
    notes = events.notes(previous, observation, created=created, updated=updated, drift=drift)
    # at once, not one round trip each: a new pooled session's reconcile posts Created and Ready;
    # every post ends before a failure of one is raised, so none is left running on its own
    posted = await asyncio.gather(
        *(post_event(client, body, note, now=now, previous=previous) for note in notes),
        return_exceptions=True,
    )
    for result in posted:
        if isinstance(result, BaseException):
            raise result
    meta = body["metadata"]
    return Outcome(body["kind"], meta["namespace"], meta["name"], observation.phase, changes)


async def post_event(
    client: KubeClient,
    body: Mapping[str, Any],
    note: events.Note,
    *,
    now: str,
    previous: Mapping[str, Any],
) -> None:
    """Post one event; a refusal is logged, never fails the reconciliation it reports on."""
    try:
        await client.create(events.build_event(body, note, now=now, previous=previous))
    except ConflictError:
        return  # a racing reconciliation posted this very event
    except ApiError as error:
        logger.warning(
            "cannot post event %s on %s: %s", note.reason, body["metadata"]["name"], error
        )
