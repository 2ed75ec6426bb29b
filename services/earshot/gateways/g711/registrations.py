"""The sessions a pool gateway admits: their registrations, read from TranscriptionSessions.

The operator registers a pooled session by writing ``status.registration`` (the contract is
``earshot_operator.dataplane.REGISTRATION*``; a test reads what the operator writes): the pool,
the session id, the SHA-256 of the session's token (absent with ``auth: none``) and the session's
settings under the same ``EARSHOT_*`` names a dedicated gateway reads from its ConfigMap. The
session id and auth decide admission; the others become that session's own :class:`Settings`
(the pool's, with the session's applied), used for its streams only.

A pool gateway keeps no token: a client's token is hashed and compared with the registered digest
in constant time. :class:`Registry` is the table (keyed by the resource, looked up by session id);
``following`` keeps it current from the API server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from earshot.events import InvalidSessionId, SessionId, parse_session_id
from earshot.settings import Settings

log = logging.getLogger(__name__)

# The contract's names (a copy of earshot_operator.dataplane's; a unit test checks both agree).
REGISTRATION = "registration"
POOL = "pool"
SESSION_ID = "sessionId"
TOKEN_SHA256 = "tokenSha256"
SETTINGS = "settings"
#: Registration settings that decide admission rather than configure the stream.
SESSION_ID_SETTING = "EARSHOT_SESSION_ID"
AUTH_SETTING = "EARSHOT_AUTH"
_PREFIX = "EARSHOT_"


class NotAdmitted(Exception):
    """Why a connection is not admitted: ``code`` for the client, the message in ``args[0]``."""

    def __init__(self, code: str, message: str) -> None:
        """A refusal ``code`` (``session_not_registered``, ``unauthorized``) and its message."""
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Registration:
    """One session registered with the pool: who may stream it, and with which settings."""

    resource: str  # namespace/name of its TranscriptionSession
    session_id: SessionId
    token_sha256: str | None
    settings: Settings

    def admits(self, offered: str) -> bool:
        """Whether ``offered`` is the session's token (always, for a session without one)."""
        if self.token_sha256 is None:
            return True
        digest = hashlib.sha256(offered.encode()).hexdigest()
        return hmac.compare_digest(digest, self.token_sha256)


def resource_of(body: Mapping[str, Any]) -> str:
    """``namespace/name`` of a resource body."""
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def parse(body: Mapping[str, Any], *, pool: str, base: Settings) -> Registration | None:
    """The registration a TranscriptionSession holds with ``pool``; None when it has none, is being
    deleted (a finalizer may hold it for a while), or has one that cannot be applied (logged: its
    clients are then refused, never served wrongly)."""
    registration = (body.get("status") or {}).get(REGISTRATION) or {}
    if registration.get(POOL) != pool or not (body.get("spec") or {}).get("active", True):
        return None
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    resource = resource_of(body)
    values: Mapping[str, str] = registration.get(SETTINGS) or {}
    try:
        session_id = parse_session_id(str(registration.get(SESSION_ID, "")))
        settings = _session_settings(values, base)
    except (InvalidSessionId, ValidationError, ValueError) as exc:
        log.warning("session %s: its registration cannot be applied: %s", resource, exc)
        return None
    digest = registration.get(TOKEN_SHA256)
    if values.get(AUTH_SETTING, "token") != "none" and not digest:
        log.warning("session %s: auth token but no token digest registered", resource)
        return None
    return Registration(resource, session_id, str(digest) if digest else None, settings)


def _session_settings(values: Mapping[str, str], base: Settings) -> Settings:
    """The pool's settings with a session's applied (validated as at a dedicated gateway's start).

    Raises:
        ValueError: a name the gateway does not know, or a value its settings refuse.
    """
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name in (SESSION_ID_SETTING, AUTH_SETTING):
            continue
        field = name.removeprefix(_PREFIX).lower()
        if not name.startswith(_PREFIX) or field not in Settings.model_fields:
            raise ValueError(f"unknown session setting {name}")
        fields[field] = value
    # Defaults stay defaults (a setting counts as set, and is checked against the engine, only
    # when someone set it).
    return base.with_given(fields)


class Registry:
    """The registrations a pool gateway knows now, and a way to wait for one to arrive."""

    def __init__(self) -> None:
        """Empty until the follower's first list."""
        self._by_resource: dict[str, Registration] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        """How many sessions are registered."""
        return len(self._by_resource)

    def put(self, resource: str, registration: Registration | None) -> Registration | None:
        """Record a resource's registration (None: it has none now).

        Returns:
            The registration lost (the resource's session id is no longer registered by it: a
            stream admitted under it must end), else None.
        """
        old = self._by_resource.pop(resource, None)
        if registration is not None:
            self._by_resource[resource] = registration
        self._notify()
        if old is not None and (registration is None or registration.session_id != old.session_id):
            return old
        return None

    def replace(self, registrations: Iterable[Registration]) -> list[Registration]:
        """Replace the whole table (a fresh list); the registrations lost, as :meth:`put`."""
        before = self._by_resource
        self._by_resource = {r.resource: r for r in registrations}
        self._notify()
        kept = {(r.resource, r.session_id) for r in self._by_resource.values()}
        return [r for r in before.values() if (r.resource, r.session_id) not in kept]

    def find(self, session_id: SessionId) -> Registration | None:
        """The one registration of ``session_id``.

        Raises:
            NotAdmitted: two resources register the same session id.
        """
        found = [r for r in self._by_resource.values() if r.session_id == session_id]
        if len(found) > 1:
            names = ", ".join(sorted(r.resource for r in found))
            raise NotAdmitted(
                "session_ambiguous",
                f"session {session_id} is registered by more than one TranscriptionSession "
                f"({names}); delete all but one",
            )
        return found[0] if found else None

    async def admit(self, session_id: SessionId, offered: str, *, wait: float) -> Registration:
        """The registration a connection of ``session_id`` offering ``offered`` streams under.

        A session the operator registered a moment ago may not have reached this gateway yet:
        wait up to ``wait`` seconds for it.

        Raises:
            NotAdmitted: not registered (in time), or the token is not the session's.
        """
        registration = await self._wait_for(session_id, wait)
        if registration is None:
            raise NotAdmitted(
                "session_not_registered",
                f"session {session_id} is not registered with this gateway pool: create its "
                "TranscriptionSession (placed on this pool) and wait until it is Ready",
            )
        if not registration.admits(offered):
            raise NotAdmitted(
                "unauthorized",
                "this session needs its access token (the Secret named in the session's "
                "status.tokenSecret): send 'Authorization: Bearer <token>' or the 'token' query "
                "parameter",
            )
        return registration

    async def _wait_for(self, session_id: SessionId, wait: float) -> Registration | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while (registration := self.find(session_id)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return None
        return registration

    def _notify(self) -> None:
        # Wake every waiter once; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()
