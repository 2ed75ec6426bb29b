"""Placing a TranscriptionSession on a gateway pool, and its registration there. Pure, no I/O.

A pooled session gets no Deployment, Service or pod: the operator mints its token (the same
Secret a dedicated session gets) and writes ``status.registration`` (``dataplane.REGISTRATION``):
the pool, the session id, the token's SHA-256 and the session's settings. The pool's gateways
follow registrations through the API server, admit the session with its own token and apply its
settings to its streams; without a registration (deleted, inactive) they end its stream.

A placement, once resolved, is kept in ``status.placement``: a session whose spec names none
stays where it was when the operator's default changes, and a spec that moves a session between
a pool and a dedicated gateway is refused (the operator never deletes a running gateway).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from earshot_operator import dataplane, gateways, specs
from earshot_operator.settings import DEDICATED, OperatorSettings, Pool


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a session streams: a pool, or (``pool`` None) a gateway of its own."""

    pool: Pool | None

    @property
    def name(self) -> str:
        """What ``status.placement`` says: ``pool/<name>`` or ``dedicated``."""
        return DEDICATED if self.pool is None else f"pool/{self.pool.name}"


def place(
    spec: specs.SessionSpec, body: Mapping[str, Any], *, settings: OperatorSettings
) -> Placement:
    """The placement of a session: its spec's, else the one it had, else the operator's default.

    Raises:
        specs.SpecError: the pool does not exist, serves another engine, cannot honour a setting
            of the session, or the placement would move a session that already has one.
    """
    status = body.get("status") or {}
    # A session written before pools existed has a token Secret but no placement: dedicated.
    previous = status.get("placement") or (DEDICATED if status.get("tokenSecret") else None)
    wanted = spec.placement or _from_status(previous) or settings.default_placement
    if wanted == DEDICATED:
        placement = Placement(None)
    else:
        pool = settings.pool(wanted)
        if pool is None:
            known = ", ".join(p.name for p in settings.pools) or "none"
            raise specs.SpecError(
                f"spec.placement names pool {wanted!r}, which this operator does not know (its "
                f"pools: {known}); name one of them or use dedicated: true"
            )
        _check_fits(spec, pool)
        placement = Placement(pool)
    if previous and previous != placement.name:
        raise specs.SpecError(
            f"the session was placed on {previous} and cannot move to {placement.name}: create a "
            "new TranscriptionSession for the new placement"
        )
    return placement


def _from_status(previous: object) -> str | None:
    if not isinstance(previous, str) or not previous:
        return None
    return previous.removeprefix("pool/")


def _check_fits(spec: specs.SessionSpec, pool: Pool) -> None:
    if spec.engine != pool.engine:
        raise specs.SpecError(
            f"pool {pool.name!r} runs engine {pool.engine}, the session asks for {spec.engine}: "
            "choose a pool of that engine or use placement dedicated: true"
        )
    if spec.storage != specs.Storage():
        raise specs.SpecError(
            f"spec.storage cannot apply on pool {pool.name!r}: its gateways store through the "
            "pool's own stores; use placement dedicated: true for a session's own stores"
        )


def placed_on(pool: Pool) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a session (a body as listed) is placed on ``pool``, by its status."""
    name = Placement(pool).name
    return lambda body: (body.get("status") or {}).get("placement") == name


def endpoint(pool: Pool, spec: specs.SessionSpec) -> str:
    """The session's WebSocket URL through the pool's Service."""
    return f"ws://{pool.address}{dataplane.SESSION_WS_PATH.format(session_id=spec.session_id)}"


def build_registration(pool: Pool, spec: specs.SessionSpec, *, token: str | None) -> dict[str, Any]:
    """``status.registration`` of an active pooled session (``token`` None: ``auth: none``)."""
    registration: dict[str, Any] = {
        dataplane.REGISTRATION_POOL: pool.name,
        dataplane.REGISTRATION_SESSION_ID: spec.session_id,
        dataplane.REGISTRATION_SETTINGS: gateways.session_config(spec),
    }
    if token is not None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        registration[dataplane.REGISTRATION_TOKEN_SHA256] = digest
    return registration
