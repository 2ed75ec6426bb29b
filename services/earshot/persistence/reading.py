"""Reading a spool stream from its acknowledgement onwards, past damage.

A stream's last file may end inside a record: while its writer lives that is a record being
written, so the reader waits for it. Once the stream is sealed (its writer is gone) or a newer file
exists, an incomplete or corrupt record can only be damage, typically the torn tail of a crash: the
reader logs it, counts it in ``earshot_spool_corrupt_records_total``, skips the rest of that file
(framing cannot be trusted past a bad length) and goes on with the next file.
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
        while True:
            offset = self.position.offset - self._buffer_start
            try:
                decoded = records.decode(self._buffer, offset)
            except records.CorruptRecord as exc:
                if not self._skip_damage(str(exc)):
                    return None
                continue
            if decoded is not None:
                record, end = decoded
                self.position = Position(self.position.file, self._buffer_start + end)
                return Entry(record, self.position)
            if self._fill():
                continue
            if not self._skip_damage("truncated record at the end of the file"):
                return None

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
        """Leave the current file for the next one when it can hold nothing more; else wait."""
        newer = [n for n in spool.segment_numbers(self.stream) if n > self.position.file]
        if not newer and spool.writer_alive(self.stream):
            return False
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
