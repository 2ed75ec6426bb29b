"""The two storage ports the gateways and the persister write through.

Sequence numbers: a session's finals are numbered 1, 2, 3, ... without gaps. The partial store's
counter (``asr:sess:{id}:seq`` in Redis) holds the number of the last final; the segment store holds
the segments themselves. A reconnecting session continues from the highest of the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from earshot.events import Partial, Segment, SessionId


class StorageError(Exception):
    """A store could not be reached or refused a write."""


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
        self, batch: Sequence[Segment], *, users: Mapping[SessionId, str | None]
    ) -> None:
        """Store sessions' rows (``users``: session -> user id, and every session of ``batch``) and
        the segments in one transaction, idempotently."""
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
