"""Reading a spool stream from its acknowledgement onwards, past damage.

A segment file is *sealed* once a newer file of its stream exists or the stream's writer is gone:
the writer finishes writing a file before it creates the next one, and writes nothing after it
released its lock. Before its seal, a file that ends inside a record (or shows a record whose
checksum does not match: a write seen half done) is being written, so the reader waits and reads it
again from disk. Once the reader has seen the seal it reads the file again, and only what is still
incomplete or corrupt then is damage, typically the torn tail of a crash: the reader logs it,
counts it in ``earshot_spool_corrupt_records_total``, skips the rest of that file (framing cannot be
trusted past a bad length) and goes on with the next file. Seal first, then re-read: a reader that
decided from a read made before the seal could skip records a live writer completed meanwhile.

An intact frame this version cannot store (an unknown kind from a newer writer, a value out of
range) is skipped alone, with a log line and ``earshot_spool_unreadable_records_total``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from earshot import metrics
from earshot.persistence import records, spool
from earshot.persistence.spool import Position

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Entry:
    """A record and the stream position just past it."""

    record: records.Record
    end: Position


class StreamReader:
    """A cursor over one stream; synchronous (the drainer runs it in a thread)."""

    def __init__(self, stream: Path) -> None:
        """Start at the stream's acknowledgement."""
        self.stream = stream
        self.ack = spool.read_ack(stream)
        self.position = self.ack.position
        self._buffer = b""
        self._buffer_start = self.position.offset

    def read(self, limit: int) -> list[Entry]:
        """Up to ``limit`` records past the cursor (fewer when no more are written yet)."""
        entries: list[Entry] = []
        while len(entries) < limit:
            entry = self._next()
            if entry is None:
                break
            entries.append(entry)
        return entries

    def rewind(self) -> None:
        """Go back to the acknowledgement (a batch that was read could not be stored)."""
        self.position = self.ack.position
        self._buffer = b""
        self._buffer_start = self.position.offset

    def _next(self) -> Entry | None:
        reread = False
        while True:
            offset = self.position.offset - self._buffer_start
            try:
                decoded = records.decode(self._buffer, offset)
            except records.UnreadableRecord as exc:
                self._skip_unreadable(exc)
                continue
            except records.CorruptRecord as exc:
                why: str | None = str(exc)
            else:
                if decoded is not None:
                    record, end = decoded
                    self.position = Position(self.position.file, self._buffer_start + end)
                    return Entry(record, self.position)
                if self._fill():
                    continue
                why = None
            # Nothing complete at the cursor: wait while the file may still grow, else read it
            # again once (now that it is sealed) before calling what is left damage.
            if not self._sealed():
                self._forget_unread()
                return None
            if not reread:
                reread = True
                self._forget_unread()
                self._fill()
                continue
            if not self._skip_damage(why or "truncated record at the end of the file"):
                return None
            reread = False

    def _sealed(self) -> bool:
        newer = any(n > self.position.file for n in spool.segment_numbers(self.stream))
        return newer or not spool.writer_alive(self.stream)

    def _forget_unread(self) -> None:
        # Bytes past the cursor may be a write seen half done: read them from disk next time.
        self._buffer, self._buffer_start = b"", self.position.offset

    def _skip_unreadable(self, exc: records.UnreadableRecord) -> None:
        metrics.SPOOL_UNREADABLE_RECORDS.inc()
        log.warning(
            "spool %s: record at offset %d skipped: %s",
            self.stream / spool.segment_name(self.position.file),
            self.position.offset,
            exc,
        )
        self.position = Position(self.position.file, self._buffer_start + exc.end)

    def _fill(self) -> bool:
        """Read more of the current file into the buffer; False when nothing more is there."""
        path = self.stream / spool.segment_name(self.position.file)
        keep = self._buffer[self.position.offset - self._buffer_start :]
        start = self.position.offset + len(keep)
        try:
            with path.open("rb") as segment:
                segment.seek(start)
                more = segment.read(_READ_CHUNK)
        except FileNotFoundError:
            more = b""
        self._buffer, self._buffer_start = keep + more, self.position.offset
        return bool(more)

    def _skip_damage(self, why: str) -> bool:
        """Leave the sealed current file for the next one; False at the end of a sealed stream."""
        newer = [n for n in spool.segment_numbers(self.stream) if n > self.position.file]
        path = self.stream / spool.segment_name(self.position.file)
        size = _size(path)
        if self.position.offset < size:
            metrics.SPOOL_CORRUPT_RECORDS.inc()
            log.warning(
                "spool %s: %s at offset %d (%d bytes skipped)",
                path,
                why,
                self.position.offset,
                size - self.position.offset,
            )
        if not newer:
            # The end of a sealed stream: stay here (the drainer removes the stream).
            self.position = Position(self.position.file, size)
            self._buffer, self._buffer_start = b"", size
            return False
        self.position = Position(newer[0], 0)
        self._buffer, self._buffer_start = b"", 0
        return True

    def exhausted(self) -> bool:
        """Whether a sealed stream is read to its end."""
        if spool.writer_alive(self.stream):
            return False
        numbers = spool.segment_numbers(self.stream)
        last = numbers[-1] if numbers else self.position.file
        if self.position.file < last:
            return False
        return self.position.offset >= _size(self.stream / spool.segment_name(last))


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
