"""Draining the spool into the stores: the one code path of the persister sidecar and the embedded
default.

A drainer claims spool streams (holding each stream's ``drain.lock``), reads a batch of records
across them, writes the batch and only then acknowledges it:

* finals and session openings go to the segment store in one transaction, idempotently (segment
  ids derived from (session, seq), insert-or-ignore), retried with capped exponential backoff and
  jitter until they are stored: a segment store outage stops the acknowledgements, the spool grows
  and drains later;
* partials and final counters go to the partial store, coalesced per session (only the latest
  partial of a session and its highest final number are written) in one pipelined round trip.
  The partial store is a cache: it never holds back the acknowledgement of finals. Its writes that
  fail stay pending in memory, newer state replacing older, and are retried with backoff; a
  reconnecting session's numbering also reads the segment store, so a counter lost in a crash
  during a partial store outage breaks nothing.

Acknowledged segment files are deleted; a sealed stream drained to its end is removed. A crash
between a store write and its acknowledgement replays the batch, which the idempotent writes absorb.
Unexpected files in the spool are quarantined (:mod:`earshot.persistence.quarantining`) instead of
stopping the drainer.

Health: the drainer beats each round and each retry of a store write. :attr:`Drainer.healthy` (and
``earshot_persistence_up{component="drainer"}``) turns False when :meth:`Drainer.run` ended on an
error, or when no beat came for ``stall_seconds``: a store write or a spool read that hangs. A
store that is down is not a stall (the retries beat): it shows in
``earshot_persister_oldest_unacked_age_seconds`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import quarantining, records, spool
from earshot.persistence.reading import Entry, StreamReader
from earshot.persistence.spool import Ack, Position
from earshot.storage.ports import PartialStore, SegmentStore, StorageError

log = logging.getLogger(__name__)

_RETRY_BASE_SECONDS = 0.05
# How often a drainer looks for unexpected files to quarantine.
_TIDY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class DrainPolicy:
    """How a drainer batches and retries."""

    batch_size: int = 100
    poll_seconds: float = 0.05
    retry_max_seconds: float = 5.0
    stall_seconds: float = 120.0


def backoff(attempt: int, cap: float) -> float:
    """Capped exponential backoff with full jitter: a delay in (0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, _RETRY_BASE_SECONDS * 2.0 ** min(attempt, 30))
    return ceiling * random.uniform(0.1, 1.0)


class DrainInterrupted(Exception):
    """The shutdown deadline passed before a batch could be stored (it stays in the spool)."""


@dataclass(slots=True)
class _Claim:
    reader: StreamReader
    lock_fd: int


@dataclass(slots=True)
class _Batch:
    entries: list[tuple[_Claim, list[Entry]]]

    @property
    def records(self) -> list[records.Record]:
        return [entry.record for _, entries in self.entries for entry in entries]


@dataclass(slots=True)
class _HotState:
    """Partial-store writes not yet done: the latest partial and final number per session."""

    partials: dict[SessionId, Partial] = field(default_factory=dict)
    commits: dict[SessionId, int] = field(default_factory=dict)
    attempt: int = 0
    retry_at: float = 0.0

    def merge(self, batch: Sequence[records.Record]) -> None:
        for record in batch:
            if isinstance(record, Segment):
                seq = max(self.commits.get(record.session_id, 0), record.seq)
                self.commits[record.session_id] = seq
                held = self.partials.get(record.session_id)
                if held is not None and held.seq <= seq:
                    del self.partials[record.session_id]
            elif isinstance(record, Partial) and record.seq > self.commits.get(
                record.session_id, 0
            ):
                self.partials[record.session_id] = record

    @property
    def pending(self) -> bool:
        return bool(self.partials or self.commits)


class Drainer:
    """Drains spool streams into a partial store and a segment store until stopped."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        partials: PartialStore,
        segments: SegmentStore,
        policy: DrainPolicy,
        own_stream: Path | None = None,
    ) -> None:
        """Prepare a drainer; :meth:`run` drains.

        Args:
            spool_dir: the spool's directory.
            partials: where partials and final counters go.
            segments: where sessions and final segments go.
            policy: batch size, polling interval, retry cap.
            own_stream: in a gateway's process, its own stream: the drainer then takes only that
                stream and sealed streams of earlier incarnations. None (the sidecar): every stream.
        """
        self._spool_dir = spool_dir
        self._partials = partials
        self._segments = segments
        self._policy = policy
        self._own_stream = own_stream
        self._claims: dict[Path, _Claim] = {}
        self._hot = _HotState()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._acked: dict[Path, Position] = {}
        self._stop_at: float | None = None
        self._idle = False
        self._beat = time.monotonic()
        self._failed = False
        self._tidied = 0.0
        # The moment of the oldest record of the batch being stored (None: none is), so that the
        # age gauge grows while a store write hangs, not only when the write returns.
        self._oldest: datetime | None = None

    def wake(self) -> None:
        """Say that records were appended (the embedded writer's hint; the sidecar polls)."""
        self._wake.set()

    def stop(self, deadline_seconds: float) -> None:
        """Ask :meth:`run` to drain what is there, and what live writers still append until they
        seal their streams, within ``deadline_seconds``; then return."""
        self._stop_at = time.monotonic() + deadline_seconds
        self._wake.set()

    @property
    def healthy(self) -> bool:
        """Whether the drainer has not failed and is not stuck (see the module docstring)."""
        stalled = time.monotonic() - self._beat > self._policy.stall_seconds
        return not self._failed and not stalled

    @property
    def caught_up(self) -> bool:
        """Whether the last round found nothing to drain and no partial-store write is pending."""
        return self._idle and not self._hot.pending

    async def run(self) -> None:
        """Drain until stopped (see :meth:`stop`); releases the claimed streams when it returns.

        Raises:
            Exception: whatever unexpected error stopped it; :attr:`healthy` is then False.
        """
        metrics.PERSISTENCE_UP.labels("drainer").set_function(lambda: float(self.healthy))
        metrics.PERSISTER_OLDEST_UNACKED_AGE.set_function(self._oldest_age)
        metrics.initialise_persister()
        try:
            while True:
                self._beat = time.monotonic()
                drained = await self._round()
                self._idle = drained == 0
                if self._stop_at is not None and (
                    (self.caught_up and not await asyncio.to_thread(self._writers_live))
                    or time.monotonic() >= self._stop_at
                ):
                    return
                if drained == 0:
                    await self._sleep(self._policy.poll_seconds)
        except DrainInterrupted:
            log.warning("persister stopped at its deadline with records left in the spool")
        except Exception:
            self._failed = True
            log.exception("the drainer of %s stopped", self._spool_dir)
            raise
        finally:
            for claim in self._claims.values():
                os.close(claim.lock_fd)
            self._claims.clear()

    def _oldest_age(self) -> float:
        oldest = self._oldest
        return 0.0 if oldest is None else _age(oldest)

    def _writers_live(self) -> bool:
        # A pod's containers get SIGTERM together: the gateway then still tells and spools the
        # finals of its last segments, so a stopping drainer waits (up to its deadline) for
        # every writer it drains to seal its stream.
        return any(spool.writer_alive(stream) for stream in self._claims)

    async def wait_drained(self, stream: Path, position: Position, *, within: float) -> bool:
        """Wait until ``stream`` is acknowledged up to ``position``; False after ``within`` s."""
        deadline = time.monotonic() + within
        while self._acked.get(stream, Position(0, 0)) < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _round(self) -> int:
        try:
            batch = await asyncio.to_thread(self._read_batch)
        except OSError as exc:
            log.error("spool %s cannot be read: %s", self._spool_dir, exc)
            return 0
        found = batch.records
        if found:
            await self._store(found)
            metrics.PERSISTER_BATCH_RECORDS.observe(len(found))
        else:
            self._oldest = None  # caught up (until then the last batch's, as a backlog has)
        # Also without records: skipped damage moves the acknowledgement, sealed streams go.
        await asyncio.to_thread(self._acknowledge, batch)
        self._hot.merge(found)
        await self._flush_hot()
        self._notify()
        return len(found)

    def _read_batch(self) -> _Batch:
        if time.monotonic() - self._tidied > _TIDY_SECONDS:
            self._tidied = time.monotonic()
            quarantining.tidy(self._spool_dir)
        self._claim_streams()
        left = self._policy.batch_size
        batch = _Batch([])
        for claim in self._claims.values():
            if left <= 0:
                break
            try:
                entries = claim.reader.read(left)
            except OSError as exc:
                # One stream that cannot be read must not hold back the others.
                log.error("spool %s cannot be read: %s", claim.reader.stream, exc)
                claim.reader.rewind()
                continue
            left -= len(entries)
            batch.entries.append((claim, entries))
        metrics.PERSISTER_BACKLOG_BYTES.set(
            sum(spool.unacked_bytes(c.reader.stream, c.reader.ack) for c in self._claims.values())
        )
        return batch

    def _claim_streams(self) -> None:
        for stream in spool.streams(self._spool_dir):
            if stream in self._claims:
                continue
            if (
                self._own_stream is not None
                and stream != self._own_stream
                and spool.writer_alive(stream)
            ):
                continue
            fd = spool.try_lock(stream / spool.DRAIN_LOCK)
            if fd is None:
                continue
            if not stream.exists():
                # Removed by the drainer that held it a moment ago.
                os.close(fd)
                continue
            self._claims[stream] = _Claim(StreamReader(stream), fd)

    async def _store(self, batch: list[records.Record]) -> None:
        finals = [r for r in batch if isinstance(r, Segment)]
        opened = [r for r in batch if isinstance(r, records.SessionOpened)]
        users = {r.session_id: r.user_id for r in opened}
        languages = {r.session_id: r.language for r in opened if r.language is not None}
        self._oldest = min(records.moment_of(r) for r in batch)
        attempt = 0
        while True:
            if not finals and not users:
                return
            started = time.perf_counter()
            try:
                await self._segments.add_segments(finals, users=users, languages=languages)
            except StorageError as exc:
                attempt += 1
                await self._retry("segments", attempt, exc)
                continue
            metrics.PERSISTER_WRITE_LATENCY.labels("segments").observe(
                time.perf_counter() - started
            )
            metrics.PERSISTER_WRITES.labels("final").inc(len(finals))
            metrics.PERSISTER_WRITES.labels("session").inc(len(users))
            return

    async def _retry(self, store: str, attempt: int, exc: StorageError) -> None:
        self._beat = time.monotonic()
        metrics.PERSISTER_RETRIES.labels(store).inc()
        if attempt == 1 or attempt % 20 == 0:
            log.warning("%s store write failed (attempt %d), retrying: %s", store, attempt, exc)
        delay = backoff(attempt, self._policy.retry_max_seconds)
        if self._stop_at is not None and time.monotonic() + delay > self._stop_at:
            raise DrainInterrupted from exc
        await asyncio.sleep(delay)

    def _acknowledge(self, batch: _Batch) -> None:
        for claim, entries in batch.entries:
            reader = claim.reader
            if reader.position != reader.ack.position:
                reader.ack = Ack(reader.position, reader.ack.records + len(entries))
                spool.write_ack(reader.stream, reader.ack)
                for number in spool.segment_numbers(reader.stream):
                    if number < reader.ack.position.file:
                        (reader.stream / spool.segment_name(number)).unlink(missing_ok=True)
            self._acked[reader.stream] = reader.ack.position
        for stream, claim in list(self._claims.items()):
            if claim.reader.exhausted():
                spool.remove_stream(stream)
                os.close(claim.lock_fd)
                del self._claims[stream]

    async def _flush_hot(self) -> None:
        hot = self._hot
        if not hot.pending or time.monotonic() < hot.retry_at:
            return
        partials, commits = list(hot.partials.values()), dict(hot.commits)
        started = time.perf_counter()
        try:
            await self._partials.write_batch(partials, commits)
        except StorageError as exc:
            hot.attempt += 1
            metrics.PERSISTER_RETRIES.labels("partials").inc()
            if hot.attempt == 1 or hot.attempt % 20 == 0:
                log.warning("partial store write failed (attempt %d): %s", hot.attempt, exc)
            hot.retry_at = time.monotonic() + backoff(hot.attempt, self._policy.retry_max_seconds)
            return
        metrics.PERSISTER_WRITE_LATENCY.labels("partials").observe(time.perf_counter() - started)
        metrics.PERSISTER_WRITES.labels("partial").inc(len(partials))
        # Only what was written is cleared: state merged meanwhile stays pending.
        for partial in partials:
            if hot.partials.get(partial.session_id) is partial:
                del hot.partials[partial.session_id]
        for session_id, seq in commits.items():
            if hot.commits.get(session_id) == seq:
                del hot.commits[session_id]
        hot.attempt, hot.retry_at = 0, 0.0

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()


def _age(moment: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
