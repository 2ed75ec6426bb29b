"""Which sessions this gateway process streams: one lease per live session in the partial store.

Two gateway processes streaming one session would both number its finals from the same point and
tell a client seq N for two different texts (the segment store keeps one). Inside one process the
gateway hands a session from its older connection to its newer one; across processes (two pods of
a Deployment during a replacement, two gateways sharing one MySQL) the partial store arbitrates:

* a connection claims the session's lease before it numbers anything; a lease another process
  holds refuses the connection (the gateway answers 1013 ``session_in_use``, retryable);
* one task renews every lease this process holds each third of the TTL in one round trip, so a
  process that dies (SIGKILL, node loss) lets its sessions go within ``LEASE_SECONDS``;
* a stream that ends releases its lease with the number of its last final, which the next holder
  numbers on from (the final may still be in the old process's spool, not yet in any store);
* a renewal that finds another holder (this process could not reach the store for longer than
  the TTL, and another claimed the session meanwhile) marks the session lost, and the gateway
  ends that connection.

The partial store being unreachable does not keep sessions from streaming (as for the numbering):
the claim is then logged as unchecked. With the in-process memory store the lease only guards
this process; the processes of ``EARSHOT_WORKERS`` share a spool directory, so there a lock file
per session (``<spool>/.sessions/<id>.lock``, flock) keeps a session on one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import platform
import uuid
from pathlib import Path

from earshot import metrics
from earshot.events import SessionId
from earshot.storage.ports import LeaseClaim, PartialStore, StorageError

log = logging.getLogger(__name__)

LEASE_SECONDS = 15.0
# How long a released lease remembers its last final number: long enough for the old process's
# spool to drain into the stores, which then carry the numbering.
RELEASED_KEEP_SECONDS = 300.0


class SessionInUse(Exception):
    """Another gateway process holds the session's lease."""

    def __init__(self, session_id: SessionId, holder: str) -> None:
        """Name the session and the process holding it."""
        super().__init__(f"session {session_id} is streaming through gateway {holder}")
        self.session_id = session_id
        self.holder = holder


def process_holder() -> str:
    """A name for this process that no other process (here or on another host) shares."""
    return f"{platform.node()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases of the sessions this process streams, and the task that renews them."""

    def __init__(
        self,
        partials: PartialStore,
        *,
        holder: str,
        lease_seconds: float = LEASE_SECONDS,
        lock_dir: Path | None = None,
    ) -> None:
        """Hold nothing yet; :meth:`run` renews what :meth:`claim` takes.

        ``lock_dir``: where the per-session lock files of processes sharing one host live (None:
        the partial store alone arbitrates).
        """
        self._partials = partials
        self.holder = holder
        self._lease_seconds = lease_seconds
        self._lock_dir = lock_dir
        self._locks: dict[SessionId, int] = {}
        self._held: set[SessionId] = set()
        self._lost: set[SessionId] = set()

    async def claim(self, session_id: SessionId) -> int:
        """Take the session's lease; the last final number a previous holder released (or 0).

        Raises:
            SessionInUse: another live process streams the session.
        """
        self._lock(session_id)
        try:
            claim = await self._claim(session_id)
        except BaseException:
            self._unlock(session_id)
            raise
        self._held.add(session_id)
        self._lost.discard(session_id)
        return claim

    def _lock(self, session_id: SessionId) -> None:
        if self._lock_dir is None:
            return
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_dir / f"{session_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionInUse(session_id, "another process on this host") from None
        self._locks[session_id] = fd

    def _unlock(self, session_id: SessionId) -> None:
        fd = self._locks.pop(session_id, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the lock

    async def _claim(self, session_id: SessionId) -> int:
        try:
            claim = await self._partials.claim_session(
                session_id, self.holder, ttl_seconds=self._lease_seconds
            )
        except StorageError as exc:
            metrics.STORAGE_ERRORS.labels("leases").inc()
            log.warning(
                "session %s: lease not checked, partial store unreachable: %s", session_id, exc
            )
            claim = LeaseClaim(True, self.holder)
        if not claim.granted:
            raise SessionInUse(session_id, claim.holder)
        return claim.released_seq

    def lost(self, session_id: SessionId) -> bool:
        """Whether another process took the session over while this one streamed it."""
        return session_id in self._lost

    async def release(self, session_id: SessionId, *, last_seq: int) -> None:
        """Let the session go, remembering its last final number for the next holder."""
        self._held.discard(session_id)
        self._unlock(session_id)
        if session_id in self._lost:
            self._lost.discard(session_id)
            return  # another process holds it: nothing of ours to release
        try:
            await self._partials.release_session(
                session_id, self.holder, last_seq=last_seq, keep_seconds=RELEASED_KEEP_SECONDS
            )
        except StorageError as exc:
            metrics.STORAGE_ERRORS.labels("leases").inc()
            log.warning(
                "session %s: lease not released (it lapses in %.0f s): %s",
                session_id,
                self._lease_seconds,
                exc,
            )

    async def renew(self) -> None:
        """Extend every held lease once; mark those another process took as lost."""
        held = sorted(self._held)
        try:
            taken = await self._partials.renew_sessions(
                held, self.holder, ttl_seconds=self._lease_seconds
            )
        except StorageError as exc:
            metrics.STORAGE_ERRORS.labels("leases").inc()
            log.warning("%d session leases not renewed: %s", len(held), exc)
            return
        for session_id in taken:
            if session_id in self._held:
                self._lost.add(session_id)
                log.error("session %s: another gateway process took its lease over", session_id)

    async def run(self) -> None:
        """Renew each third of the lease's TTL until cancelled."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            await self.renew()
