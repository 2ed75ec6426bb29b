"""Which TranscriptionSession holds each session id of a gateway pool. Pure, no I/O.

A pool's gateways admit a session id that exactly one TranscriptionSession registers: two that
register the same id would both be refused (``session_ambiguous``). So the operator registers a
pooled session only while it holds its id: among the active sessions placed on the same pool with
the same session id, the one created first holds it, and the others wait, unregistered, saying
which session holds it. Creation times are to the second: within one second a session already
registered keeps the id, else the first by namespace/name takes it.

:class:`SessionClaims` is kept from the operator's watch of the sessions (each event, before the
session's own handlers run). When an id's holder changes (the holder deleted, ended or given
another id, or an older claimant seen late) the table names the other claimants, which the
operator reconciles again: the next in line registers within seconds. A claim is of one object
(its uid): the deletion of a session re-created under the same name does not drop the new one's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from earshot_operator import dataplane, gateways, pools, resources, specs
from earshot_operator.settings import OperatorSettings, Pool

#: A claimed id: (pool, session id).
Key = tuple[str, str]


@dataclasses.dataclass(frozen=True, order=True)
class Claim:
    """One session's claim; claims order by age (the oldest holds the id)."""

    #: ``metadata.creationTimestamp``: RFC 3339 in UTC to the second, so text order is time order.
    created: str
    #: Whether it is not registered with the pool for this id (within a second, registered first).
    waiting: bool
    #: ``namespace/name`` of the TranscriptionSession, which breaks ties.
    resource: str
    #: ``metadata.uid``: which object of that name.
    uid: str = ""


def resource_of(body: Mapping[str, Any]) -> str:
    """``namespace/name`` of a resource."""
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def claim_of(body: Mapping[str, Any], settings: OperatorSettings) -> tuple[Key, Claim] | None:
    """What a TranscriptionSession claims: its pool and session id while it is active and
    pooled, else nothing (a dedicated, ended, deleting or invalid session claims no pool id)."""
    meta = body.get("metadata") or {}
    if body.get("kind") != resources.SESSION.kind or meta.get("deletionTimestamp"):
        return None
    try:
        # what reconcile checks first: a session it reports InvalidSpec holds nothing
        gateways.build(body, settings)
        spec = specs.parse_session(body)
        placement = pools.place(spec, body, settings=settings)
    except specs.SpecError:
        return None
    if not spec.active or placement.pool is None:
        return None
    return claim(placement.pool, spec, body)


def claim(pool: Pool, spec: specs.SessionSpec, body: Mapping[str, Any]) -> tuple[Key, Claim]:
    """The claim of an active session placed on ``pool``."""
    meta = body.get("metadata") or {}
    registration = (body.get("status") or {}).get(dataplane.REGISTRATION) or {}
    waiting = (
        registration.get(dataplane.REGISTRATION_POOL),
        registration.get(dataplane.REGISTRATION_SESSION_ID),
    ) != (pool.name, spec.session_id)
    created = str(meta.get("creationTimestamp") or "")
    key = (pool.name, spec.session_id)
    return key, Claim(created, waiting, resource_of(body), str(meta.get("uid") or ""))


class SessionClaims:
    """The claims of the sessions the operator has seen, by resource."""

    def __init__(self) -> None:
        """An empty table."""
        self._by_resource: dict[str, tuple[Key, Claim]] = {}
        #: How many times an id changed hands (a reconcile that saw it change writes again).
        self.changes = 0

    def update(self, resource: str, claimed: tuple[Key, Claim] | None) -> set[str]:
        """Record what ``resource`` claims now (None: nothing, or it was deleted).

        Returns:
            The other resources claiming an id whose holder this changed: they must be
            reconciled again (one of them may hold it now, or none may any longer).
        """
        old = self._by_resource.get(resource)
        if old == claimed:
            return set()
        keys = {entry[0] for entry in (old, claimed) if entry is not None}
        before = {key: self.holder(key) for key in keys}
        if claimed is None:
            self._by_resource.pop(resource, None)
        else:
            self._by_resource[resource] = claimed
        moved = [key for key in keys if self.holder(key) != before[key]]
        self.changes += bool(moved)
        return {other for key in moved for other in self.claimants(key) if other != resource}

    def forget(self, resource: str, uid: str) -> set[str]:
        """A resource was deleted: drop its claim if it is that object's (as :meth:`update`)."""
        old = self._by_resource.get(resource)
        if old is None or old[1].uid != uid:
            return set()  # a newer object of that name claims now, or nothing did
        return self.update(resource, None)

    def holder(self, key: Key) -> Claim | None:
        """The claim that holds ``key``: the oldest."""
        return min((claim for k, claim in self._by_resource.values() if k == key), default=None)

    def claimants(self, key: Key) -> set[str]:
        """Every resource claiming ``key``."""
        return {claim.resource for k, claim in self._by_resource.values() if k == key}

    def taken_from(self, claimed: tuple[Key, Claim]) -> Claim | None:
        """The claim holding ``claimed``'s id, if another session's holds it."""
        key, claim = claimed
        holder = self.holder(key)
        if holder is None or holder.resource == claim.resource or not holder < claim:
            return None
        return holder
