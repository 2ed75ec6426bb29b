"""Keeping Talk calls' transcripts: each call is a session of the same spool, persister and stores
that keep telephony finals (PROTOCOLS.md §1 tables, DESIGN.md persister).

A call's session id is ``talk:<room token>:<UTC start, YYYYmmddTHHMMSS>``; its finals are numbered
from 1 and each knows its speaker (the Nextcloud user id, or the HPB session id of a guest) and
when the speech began and ended. :class:`CallTranscript` takes finals without waiting (the caption
path must not wait for a disk) and one task spools them in order; closing the call spools what is
left. A spool that cannot be written makes the journal unhealthy, and with it the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

from earshot import metrics
from earshot.events import Segment, SessionId
from earshot.persistence import journaling
from earshot.persistence.spool import SpoolError
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.ports import StorageError

log = logging.getLogger(__name__)

#: Finals of one call waiting for the spool; more are dropped and counted (the spool is stuck).
QUEUE_FINALS = 1000


def session_id(token: str, started: datetime) -> SessionId:
    """The session id of the call in room ``token`` that started at ``started``."""
    return SessionId(f"talk:{token}:{started.astimezone(UTC):%Y%m%dT%H%M%S}")


def wall_clock(perf_counter_time: float) -> datetime:
    """The UTC time of a ``time.perf_counter`` reading taken in this process."""
    return datetime.now(UTC) - timedelta(seconds=time.perf_counter() - perf_counter_time)


@asynccontextmanager
async def open_journal(settings: Settings) -> AsyncIterator[journaling.Journal]:
    """The stores the settings name and the gateway's journal over them; closed on exit."""
    async with AsyncExitStack() as stack:
        partials = backends.open_partial_store(
            settings.partials_url, ttl_seconds=settings.partial_ttl_seconds
        )
        stack.push_async_callback(partials.aclose)
        segments = await backends.open_segment_store(settings.resolved_segments_url())
        stack.push_async_callback(segments.aclose)
        yield await stack.enter_async_context(
            journaling.open_journal(settings, partials=partials, segments=segments)
        )


class CallTranscript:
    """One call's finals on their way to the journal; owns the task that spools them."""

    def __init__(self, journal: journaling.Journal, session: SessionId, next_seq: int) -> None:
        self.session_id = session
        self._journal = journal
        self._next_seq = next_seq
        self._queue: asyncio.Queue[Segment | None] = asyncio.Queue(QUEUE_FINALS)
        self._task = asyncio.create_task(self._spool(), name=f"keep-{session}")

    @classmethod
    async def open(cls, journal: journaling.Journal, token: str) -> CallTranscript:
        """Start the transcript of a call that starts now.

        Raises:
            StorageError: the store cannot be read to number the finals.
        """
        session = session_id(token, datetime.now(UTC))
        return cls(journal, session, await journal.open_session(session))

    def add(self, *, speaker: str, text: str, started_at: datetime, ended_at: datetime) -> None:
        """Keep a final (without waiting)."""
        segment = Segment(
            self.session_id,
            self._next_seq,
            text,
            datetime.now(UTC),
            speaker=speaker[:64],
            started_at=started_at,
            ended_at=max(ended_at, started_at),
        )
        try:
            self._queue.put_nowait(segment)
        except asyncio.QueueFull:
            metrics.TALK_TRANSCRIPT_FINALS.labels("dropped").inc()
            log.error(
                "call %s: the spool is behind, final %d dropped", self.session_id, segment.seq
            )
            return
        self._next_seq += 1

    async def close(self) -> None:
        """Spool what is queued, then stop."""
        if not self._task.done():
            await self._queue.put(None)  # behind what is queued: the task spools it all first
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise

    async def _spool(self) -> None:
        while (segment := await self._queue.get()) is not None:
            try:
                await self._journal.final(segment)
            except (SpoolError, StorageError) as exc:
                metrics.TALK_TRANSCRIPT_FINALS.labels("failed").inc()
                log.error("call %s: final %d not kept: %s", self.session_id, segment.seq, exc)
                continue
            metrics.TALK_TRANSCRIPT_FINALS.labels("kept").inc()
