"""The two storage ports the gateways and the persister write through.

Sequence numbers: a session's finals are numbered 1, 2, 3, ... without gaps. The partial store's
counter (``asr:sess:{id}:seq`` in Redis) holds the number of the last final; the segment store holds
the segments themselves. A reconnecting session continues from the highest of the two.

Leases: a session streams through one gateway process at a time. The partial store (shared by
every gateway that shares a segment store) holds each live session's lease, with a TTL that its
holder keeps renewing, so a holder that died lets its sessions go within that TTL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from earshot.events import Partial, Segment, SessionId


class StorageError(Exception):
    """A store could not be reached or refused a write."""


@dataclass(frozen=True, slots=True)
class LeaseClaim:
    """The answer to a claim of a session's lease.

    ``granted``: the caller holds the lease now. Otherwise ``holder`` names the gateway process
    that holds it. ``released_seq``: the last final number a previous holder told its client when
    it let the lease go (0 when unknown), so the new holder never numbers below it.
    """

    granted: bool
    holder: str = ""
    released_seq: int = 0


class PartialStore(Protocol):
    """Hot, short-lived state: the current partial text and the final counter of each session."""

    async def put_partial(self, partial: Partial) -> None:
        """Replace the session's current partial (content, seq, ts), refreshing its TTL."""
        ...

    async def commit_final(self, session_id: SessionId, seq: int) -> None:
        """Record that final ``seq`` is stored: raise the counter to it and drop the partial."""
        ...

    async def write_batch(
        self, partials: Sequence[Partial], commits: Mapping[SessionId, int]
    ) -> None:
        """Put several partials, then commit several finals (session -> seq), in one round trip."""
        ...

    async def last_seq(self, session_id: SessionId) -> int:
        """The counter: the number of the session's last final, 0 when none."""
        ...

    async def claim_session(
        self, session_id: SessionId, holder: str, *, ttl_seconds: float
    ) -> LeaseClaim:
        """Take the session's lease for ``holder`` unless another holder has it (and it is live)."""
        ...

    async def renew_sessions(
        self, session_ids: Sequence[SessionId], holder: str, *, ttl_seconds: float
    ) -> list[SessionId]:
        """Extend ``holder``'s leases in one round trip; return those another holder took.

        A lease that lapsed or was released is not taken back: a release may overtake a renewal.
        """
        ...

    async def release_session(
        self, session_id: SessionId, holder: str, *, last_seq: int, keep_seconds: float
    ) -> None:
        """Let the lease go if ``holder`` has it, remembering ``last_seq`` for ``keep_seconds``."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class SegmentStore(Protocol):
    """Cold, durable state: the `sessions` and `segments` tables of PROTOCOLS.md §1."""

    async def ensure_session(self, session_id: SessionId, user_id: str | None) -> None:
        """Create the session's row if it does not exist yet (idempotent)."""
        ...

    async def add_segment(self, segment: Segment) -> None:
        """Store a final segment; storing the same (session, seq) again changes nothing."""
        ...

    async def add_segments(
        self,
        batch: Sequence[Segment],
        *,
        users: Mapping[SessionId, str | None],
        languages: Mapping[SessionId, str] | None = None,
    ) -> None:
        """Store sessions' rows (``users``: session -> user id, and every session of ``batch``;
        ``languages``: session -> the language it is declared to speak) and the segments in one
        transaction, idempotently."""
        ...

    async def last_seq(self, session_id: SessionId) -> int:
        """The highest stored segment number of the session, 0 when none."""
        ...

    async def segments(self, session_id: SessionId) -> list[Segment]:
        """Every stored segment of the session, in sequence order."""
        ...

    async def session(self, session_id: SessionId) -> tuple[str | None, datetime] | None:
        """The session's user id and creation time, or None when it is not stored."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
