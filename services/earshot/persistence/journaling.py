"""The gateway's side of persistence: a journal that numbers, spools and (embedded) drains.

A gateway records a session opening, partials and finals in its :class:`Journal`. The journal
appends them to the spool; a final is fsynced before :meth:`Journal.final` returns, so the gateway
may send it to the client. With the embedded drainer (``persister=embedded``, the default) the
journal also waits, up to ``final_store_wait_seconds``, until the final is in the segment store,
so a client that reads the store after a final finds it there, as with the older server; the
sidecar (``persister=sidecar``) drains in its own process and the final is sent once spooled.

:attr:`Journal.healthy` says whether the spool writer and (embedded) the drainer still work; the
gateway's ``/health`` fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime

from earshot.events import Partial, Segment, SessionId
from earshot.persistence import leasing, quarantining, resuming
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.persistence.records import SessionOpened
from earshot.persistence.writing import SpoolWriter
from earshot.settings import Settings
from earshot.storage.ports import PartialStore, SegmentStore

log = logging.getLogger(__name__)


class Journal:
    """Numbering, spooling and (embedded) draining of every session of one gateway."""

    def __init__(
        self,
        writer: SpoolWriter,
        index: resuming.SeqIndex,
        *,
        partials: PartialStore,
        segments: SegmentStore,
        drainer: Drainer | None,
        store_wait_seconds: float,
        leases: leasing.Leases,
        draining: asyncio.Task[None] | None = None,
    ) -> None:
        """Wrap an opened writer; prefer :func:`open_journal`."""
        self._draining = draining
        self.leases = leases
        self._writer = writer
        self._index = index
        self._partials = partials
        self._segments = segments
        self._drainer = drainer
        self._store_wait = store_wait_seconds

    @property
    def healthy(self) -> bool:
        """Whether the spool writer runs and the embedded drainer (if any) runs and is not stuck."""
        if not self._writer.alive:
            return False
        if self._drainer is None:
            return True
        return self._drainer.healthy and self._draining is not None and not self._draining.done()

    @property
    def full(self) -> bool:
        """Whether the spool is over its bound: new audio must be refused (finals still go in)."""
        return self._writer.full

    async def open_session(
        self, session_id: SessionId, user_id: str | None = None, language: str | None = None
    ) -> int:
        """Take the session's lease, record a (re)connection and return the number its next final
        gets; :meth:`close_session` gives the lease back. ``user_id`` and ``language`` (the one the
        session is declared to speak) fill the session's row.

        Raises:
            leasing.SessionInUse: another gateway process streams the session.
            StorageError: the segment store cannot be read to continue the numbering.
        """
        released = await self.leases.claim(session_id)
        try:
            seq = await resuming.next_seq(
                session_id, self._index, partials=self._partials, segments=self._segments
            )
        except BaseException:
            await self.leases.release(session_id, last_seq=released)
            raise
        opened = SessionOpened(session_id, user_id, datetime.now(UTC), language=language)
        self._append_nowait(opened)
        return max(seq, released + 1)

    async def close_session(self, session_id: SessionId, *, last_seq: int) -> None:
        """Give the session's lease back once its last final (``last_seq``) is spooled."""
        await self.leases.release(session_id, last_seq=last_seq)

    def partial(self, partial: Partial) -> None:
        """Spool a partial (no fsync, no waiting)."""
        self._append_nowait(partial)

    async def final(self, segment: Segment) -> None:
        """Spool a final durably; embedded, also wait (bounded) for it to be stored.

        Raises:
            SpoolError: the spool cannot be written.
        """
        self._index.note(segment.session_id, segment.seq)
        position = await self._writer.append(segment)
        if self._drainer is None:
            return
        self._drainer.wake()
        stream = self._writer.stream
        if not await self._drainer.wait_drained(stream, position, within=self._store_wait):
            log.warning(
                "session %s: final %d is spooled but not yet stored after %.1f s",
                segment.session_id,
                segment.seq,
                self._store_wait,
            )

    def _append_nowait(self, record: SessionOpened | Partial) -> None:
        # No wake-up: the drainer's next poll (or the next final's wake-up) takes partials along,
        # so a burst of partials costs one drain round, not one each.
        self._writer.append_nowait(record)


@asynccontextmanager
async def open_journal(
    settings: Settings, *, partials: PartialStore, segments: SegmentStore
) -> AsyncIterator[Journal]:
    """Open this gateway's spool stream (and, embedded, its drainer task); close them on exit.

    Leaving the block seals the stream; the embedded drainer then drains what is left within
    ``persister_shutdown_seconds`` (what it cannot store stays in the spool for the next start).

    Raises:
        SpoolError: the spool directory cannot be used.
    """
    spool_dir = settings.resolved_spool_dir()
    writer = SpoolWriter(
        spool_dir,
        segment_bytes=settings.spool_segment_bytes,
        max_bytes=settings.spool_max_bytes,
        stall_seconds=settings.spool_stall_seconds,
    )
    async with AsyncExitStack() as stack:
        writer.start()
        stack.push_async_callback(writer.close)
        await asyncio.to_thread(quarantining.tidy, spool_dir)
        index = await asyncio.to_thread(resuming.scan, spool_dir, skip=writer.stream)
        # Worker processes (EARSHOT_WORKERS) share this spool: lock files keep a session on one.
        lock_dir = spool_dir / ".sessions" if settings.workers > 1 or settings.reuse_port else None
        leases = leasing.Leases(partials, holder=leasing.process_holder(), lock_dir=lock_dir)
        renewing = asyncio.create_task(leases.run(), name="earshot-session-leases")
        stack.push_async_callback(_cancel, renewing)
        drainer, task = None, None
        if settings.persister == "embedded":
            drainer = Drainer(
                spool_dir,
                partials=partials,
                segments=segments,
                policy=drain_policy(settings),
                own_stream=writer.stream,
            )
            task = asyncio.create_task(drainer.run(), name="earshot-embedded-persister")
            stack.push_async_callback(_finish, drainer, task, settings.persister_shutdown_seconds)
        # Runs first on exit: sealing the stream lets the drainer finish it and remove it.
        stack.push_async_callback(writer.close)
        yield Journal(
            writer,
            index,
            partials=partials,
            segments=segments,
            drainer=drainer,
            store_wait_seconds=settings.final_store_wait_seconds,
            leases=leases,
            draining=task,
        )


async def _finish(drainer: Drainer, task: asyncio.Task[None], deadline: float) -> None:
    drainer.stop(deadline)
    try:
        await asyncio.wait_for(task, deadline + 1.0)
    except TimeoutError:
        log.warning("embedded persister did not stop within %.1f s", deadline)
    except Exception:
        # The drainer logged what stopped it, and /health has failed since.
        log.debug("the embedded persister had stopped on an error")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def drain_policy(settings: Settings) -> DrainPolicy:
    """The batching and retry policy the settings ask for."""
    return DrainPolicy(
        batch_size=settings.persister_batch_size,
        poll_seconds=settings.persister_poll_seconds,
        retry_max_seconds=settings.persister_retry_max_seconds,
        stall_seconds=settings.persister_stall_seconds,
    )
