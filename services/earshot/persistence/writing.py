"""The spool's writer: a gateway's appends, from one dedicated thread, with group commit.

Fsync policy: a final is fsynced before :meth:`SpoolWriter.append` returns, so a final a client
has received survives a crash of the gateway, the persister or the machine. Finals of many sessions
that arrive together share one fsync (group commit). A batch that rolls to a new segment file
fsyncs the file it leaves before closing it, and the directory once the new file exists, so every
file that holds an acknowledged final is durable before the acknowledgement. Partials and session
openings are written without fsync (:meth:`SpoolWriter.append_nowait`): after a crash at most the
last moments of partials are lost, and the next partial replaces them anyway. All file I/O runs in
the writer thread, never on the event loop.

Bound: the writer counts the bytes not yet acknowledged (its own stream exactly, older streams by
their file sizes); :attr:`SpoolWriter.full` says when they exceed ``max_bytes``. The bound is for
the gateway's admission of new audio: an append is never refused, so a final of audio already
accepted is always written.

Failure: should the writer thread ever stop on an unexpected error, it fails every waiting and
later append with :class:`SpoolError` (no final waits forever), says so in the log and in
``earshot_persistence_up{component="spool_writer"}``, and :attr:`SpoolWriter.alive` turns False,
which fails the gateway's ``/health``. A writer whose disk stopped answering (a write or fsync that
has not returned for ``stall_seconds``, in a gateway ``EARSHOT_SPOOL_STALL_SECONDS``, as on a hung
NFS server) is not alive either, though its thread still runs: the liveness probe restarts the
gateway instead of leaving every final waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from earshot import metrics
from earshot.persistence import records
from earshot.persistence.spool import (
    WRITER_LOCK,
    Position,
    SpoolError,
    fsync_dir,
    read_ack,
    segment_name,
    streams,
    unacked_bytes,
)
from earshot.settings import Settings

log = logging.getLogger(__name__)

# How often the writer thread re-reads the acknowledgement to refresh its depth.
_REFRESH_SECONDS = 0.2
#: How long one batch's I/O may take before the writer counts as stalled (not alive), unless the
#: gateway's settings say otherwise (``EARSHOT_SPOOL_STALL_SECONDS``, whose default this is). Far
#: above a slow fsync (seconds on a busy disk), far below a human noticing that finals stopped.
STALL_SECONDS: float = Settings.model_fields["spool_stall_seconds"].default


@dataclass(slots=True)
class _Append:
    data: bytes
    durable: bool
    done: asyncio.Future[Position] | None


class SpoolWriter:
    """Appends records to a new stream of a spool from one dedicated thread."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        segment_bytes: int,
        max_bytes: int,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        """Create this incarnation's stream and take its writer lock; call :meth:`start` next.

        Raises:
            SpoolError: the directory cannot be created or written.
        """
        self.spool_dir = spool_dir
        self._segment_bytes = segment_bytes
        self._max_bytes = max_bytes
        self._stall_seconds = stall_seconds
        try:
            spool_dir.mkdir(parents=True, exist_ok=True)
            self.stream = self._new_stream()
        except OSError as exc:
            raise SpoolError(f"spool directory {spool_dir} cannot be used: {exc}") from exc
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._file = 1
        self._fd = os.open(self.stream / segment_name(1), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._sizes: dict[int, int] = {1: 0}
        self._written_records = 0
        self._acked_records = 0
        self._closed = False
        self._unacked = 0
        self._others = 0
        self._last_refresh = 0.0
        # Guards _failure against appends queued while the thread is dying.
        self._state = threading.Lock()
        self._failure: SpoolError | None = None
        self._in_flight: list[_Append] = []
        self._busy_since: float | None = None  # monotonic start of the batch being written

    def _new_stream(self) -> Path:
        # Build it under a hidden name and rename it into place once locked, so that a drainer
        # never sees a stream whose writer lock is still free.
        name = f"{time.time_ns():020d}-{os.getpid()}"
        building = self.spool_dir / f".{name}"
        building.mkdir()
        self._lock_fd = os.open(building / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        (building / segment_name(1)).touch()
        # The first file's entry must be durable as the stream's is: finals in it are acknowledged
        # before any roll fsyncs the stream's directory.
        fsync_dir(building)
        stream = self.spool_dir / name
        building.rename(stream)
        fsync_dir(self.spool_dir)
        return stream

    @property
    def unacked_bytes(self) -> int:
        """Bytes appended (by this writer and earlier ones) and not yet acknowledged."""
        return self._unacked + self._others

    @property
    def full(self) -> bool:
        """Whether the spool holds more unacknowledged bytes than its bound."""
        return self.unacked_bytes >= self._max_bytes

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs, can take appends and is not stalled on its disk."""
        busy_since = self._busy_since
        stalled = busy_since is not None and time.monotonic() - busy_since > self._stall_seconds
        return self._failure is None and self._thread.is_alive() and not stalled

    def start(self) -> None:
        """Start the writer thread (from the event loop that will await appends)."""
        self._loop = asyncio.get_running_loop()
        self._refresh()
        self._thread.start()
        metrics.PERSISTENCE_UP.labels("spool_writer").set_function(lambda: float(self.alive))

    def append_nowait(self, record: records.Record) -> None:
        """Queue a record to be written without fsync (partials, session openings).

        Raises:
            OutOfRange: a value of the record does not fit the stores.
            SpoolError: the writer thread has stopped.
        """
        self._put(_Append(records.encode(record), False, None))

    async def append(self, record: records.Record) -> Position:
        """Write a record and fsync it (finals); returns the position just past it.

        Raises:
            OutOfRange: a value of the record does not fit the stores.
            SpoolError: the spool cannot be written, or the writer thread has stopped.
        """
        assert self._loop is not None, "start() the writer first"
        done: asyncio.Future[Position] = self._loop.create_future()
        self._put(_Append(records.encode(record), True, done))
        return await done

    def _put(self, append: _Append) -> None:
        with self._state:
            if self._failure is not None:
                raise self._failure
            self._queue.put(append)

    async def close(self) -> None:
        """Write what is queued, stop the thread and release the writer lock (sealing the stream).

        Closing twice does nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
        os.close(self._fd)
        os.close(self._lock_fd)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            log.exception("spool %s: the writer thread stopped", self.stream)
            self._die(SpoolError(f"spool {self.stream}: the writer thread stopped: {exc!r}"))

    def _die(self, failure: SpoolError) -> None:
        with self._state:
            self._failure = failure
        self._fail(self._in_flight, failure)
        with contextlib.suppress(queue.Empty):
            while True:
                append = self._queue.get_nowait()
                if append is not None and append.done is not None:
                    self._fail([append], failure)

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=_REFRESH_SECONDS)
            except queue.Empty:
                self._refresh()
                continue
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(self._queue.get_nowait())
            appends = self._in_flight = [a for a in batch if a is not None]
            self._busy_since = time.monotonic()
            try:
                self._commit(appends)
            except OSError as exc:
                log.error("spool %s: write failed: %s", self.stream, exc)
                self._fail(appends, SpoolError(f"spool {self.stream} cannot be written: {exc}"))
                # A record may be half written: go on in a new file, so that readers skip the
                # damage instead of waiting for the rest of it.
                with contextlib.suppress(OSError):
                    self._roll()
            self._in_flight = []
            self._busy_since = None
            if batch[-1] is None:
                return
            if time.monotonic() - self._last_refresh > _REFRESH_SECONDS:
                self._refresh()

    def _commit(self, appends: list[_Append]) -> None:
        positions: list[tuple[asyncio.Future[Position], Position]] = []
        pending = bytearray()
        for append in appends:
            if self._sizes[self._file] + len(pending) >= self._segment_bytes:
                self._write(pending)
                pending.clear()
                self._roll()
            pending += append.data
            if append.done is not None:
                end = Position(self._file, self._sizes[self._file] + len(pending))
                positions.append((append.done, end))
        self._write(pending)
        self._written_records += len(appends)
        if positions:
            started = time.perf_counter()
            os.fsync(self._fd)
            metrics.SPOOL_FSYNC_SECONDS.observe(time.perf_counter() - started)
        self._unacked += sum(len(a.data) for a in appends)
        self._publish_depth()
        for done, position in positions:
            self._resolve(done, position)

    def _write(self, data: bytearray) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._sizes[self._file] += written
            view = view[written:]

    def _roll(self) -> None:
        # The file left may hold finals of the batch being committed: they are acknowledged after
        # the batch's one fsync of the new file, so this file must be durable first.
        os.fsync(self._fd)
        os.close(self._fd)
        self._file += 1
        self._fd = os.open(
            self.stream / segment_name(self._file), os.O_WRONLY | os.O_CREAT | os.O_APPEND
        )
        self._sizes[self._file] = 0
        fsync_dir(self.stream)

    def _resolve(self, done: asyncio.Future[Position], position: Position) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_set_result, done, position)

    def _fail(self, appends: list[_Append], error: SpoolError) -> None:
        assert self._loop is not None
        for append in appends:
            if append.done is not None:
                self._loop.call_soon_threadsafe(_set_exception, append.done, error)

    def _refresh(self) -> None:
        """Re-read how far draining got: our stream exactly, the older streams by file sizes."""
        self._last_refresh = time.monotonic()
        ack = read_ack(self.stream)
        for number in [n for n in self._sizes if n < ack.position.file]:
            del self._sizes[number]
        self._unacked = unacked_bytes(self.stream, ack, sizes=self._sizes)
        self._others = sum(
            unacked_bytes(s, read_ack(s)) for s in streams(self.spool_dir) if s != self.stream
        )
        self._acked_records = ack.records
        self._publish_depth()

    def _publish_depth(self) -> None:
        metrics.SPOOL_BYTES.set(self.unacked_bytes)
        metrics.SPOOL_RECORDS.set(max(self._written_records - self._acked_records, 0))


def _set_result(done: asyncio.Future[Position], position: Position) -> None:
    if not done.done():
        done.set_result(position)


def _set_exception(done: asyncio.Future[Position], error: Exception) -> None:
    if not done.done():
        done.set_exception(error)
