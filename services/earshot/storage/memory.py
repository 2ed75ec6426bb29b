"""The in-process partial store of the embedded default (one process, no servers).

It behaves like the Redis store: a partial expires ``ttl_seconds`` after its last write (checked
when it is read; there is no sweeper task), and the final counter never goes down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from earshot.events import Partial, SessionId
from earshot.storage.ports import LeaseClaim


@dataclass(frozen=True, slots=True)
class _Entry:
    partial: Partial
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Lease:
    holder: str
    expires_at: float


class MemoryPartialStore:
    """Partials and final counters in dictionaries; nothing survives the process."""

    def __init__(self, *, ttl_seconds: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty store.

        Args:
            ttl_seconds: how long a partial lives after its last write.
            clock: monotonic seconds; tests pass a fake one to expire partials without sleeping.
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self._ttl = ttl_seconds
        self._clock = clock
        self._partials: dict[SessionId, _Entry] = {}
        self._counters: dict[SessionId, int] = {}
        self._leases: dict[SessionId, _Lease] = {}

    async def put_partial(self, partial: Partial) -> None:
        """Replace the session's current partial and restart its TTL."""
        self._partials[partial.session_id] = _Entry(partial, self._clock() + self._ttl)

    async def commit_final(self, session_id: SessionId, seq: int) -> None:
        """Raise the counter to ``seq`` (never lower it); drop partials numbered up to ``seq``."""
        self._counters[session_id] = max(self._counters.get(session_id, 0), seq)
        entry = self._partials.get(session_id)
        # A partial of a later segment (replayed commits) is still current: keep it.
        if entry is not None and entry.partial.seq <= seq:
            del self._partials[session_id]

    async def write_batch(
        self, partials: Sequence[Partial], commits: Mapping[SessionId, int]
    ) -> None:
        """Put the partials, then commit the finals, as the Redis store does in one pipeline."""
        for partial in partials:
            await self.put_partial(partial)
        for session_id, seq in commits.items():
            await self.commit_final(session_id, seq)

    async def last_seq(self, session_id: SessionId) -> int:
        """The number of the session's last final, 0 when none."""
        return self._counters.get(session_id, 0)

    async def claim_session(
        self, session_id: SessionId, holder: str, *, ttl_seconds: float
    ) -> LeaseClaim:
        """Take the lease unless another holder has it and it has not expired."""
        lease = self._live_lease(session_id)
        if lease is not None and lease.holder != holder:
            return LeaseClaim(False, lease.holder)
        self._leases[session_id] = _Lease(holder, self._clock() + ttl_seconds)
        return LeaseClaim(True, holder)

    async def renew_sessions(
        self, session_ids: Sequence[SessionId], holder: str, *, ttl_seconds: float
    ) -> list[SessionId]:
        """Extend the leases; return those another holder took."""
        lost = []
        for session_id in session_ids:
            lease = self._live_lease(session_id)
            if lease is None:
                continue  # lapsed or released: not taken back
            if lease.holder == holder:
                self._leases[session_id] = _Lease(holder, self._clock() + ttl_seconds)
            else:
                lost.append(session_id)
        return lost

    async def release_session(
        self, session_id: SessionId, holder: str, *, last_seq: int, keep_seconds: float
    ) -> None:
        """Drop the lease if ``holder`` has it: in one process the spool index already knows the
        last told number, so nothing is kept (nor grows)."""
        lease = self._leases.get(session_id)
        if lease is not None and lease.holder == holder:
            del self._leases[session_id]

    def _live_lease(self, session_id: SessionId) -> _Lease | None:
        lease = self._leases.get(session_id)
        if lease is not None and lease.expires_at <= self._clock():
            del self._leases[session_id]
            return None
        return lease

    async def current_partial(self, session_id: SessionId) -> Partial | None:
        """The session's current partial, or None when there is none or it expired."""
        entry = self._partials.get(session_id)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            del self._partials[session_id]
            return None
        return entry.partial

    async def aclose(self) -> None:
        """Nothing to release."""
