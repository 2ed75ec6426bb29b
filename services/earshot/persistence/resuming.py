"""Where a (re)connecting session's numbering continues.

The next final number is one past the highest of: the session's finals still in the spool (not
drained yet, so in neither store), the partial store's counter and the segment store's maximum.
The counter is only ever raised after its final is in the segment store, so when the partial store
cannot be read the other two still give the right number: a Redis outage does not keep sessions
from (re)connecting. The segment store is needed (without it the numbering would be a guess).
The spool's part is an in-memory index of the highest final number per session, rebuilt at start-up
by scanning every stream from its acknowledgement, then kept current by the gateway's appends.
"""

from __future__ import annotations

import logging
from pathlib import Path

from earshot.events import Segment, SessionId
from earshot.persistence import spool
from earshot.persistence.reading import StreamReader
from earshot.storage.ports import PartialStore, SegmentStore, StorageError

log = logging.getLogger(__name__)

# A scan reads at most this many records per call, so a huge backlog is read in slices.
_SCAN_SLICE = 10_000


class SeqIndex:
    """The highest final number per session seen in the spool."""

    def __init__(self) -> None:
        """An empty index."""
        self._highest: dict[SessionId, int] = {}

    def note(self, session_id: SessionId, seq: int) -> None:
        """Record that final ``seq`` of the session is in the spool."""
        if seq > self._highest.get(session_id, 0):
            self._highest[session_id] = seq

    def highest(self, session_id: SessionId) -> int:
        """The session's highest final number in the spool, 0 when none."""
        return self._highest.get(session_id, 0)

    def __len__(self) -> int:
        return len(self._highest)


def scan(spool_dir: Path, *, skip: Path | None = None) -> SeqIndex:
    """Build the index from the unacknowledged part of every stream (blocking file I/O).

    A stream a live writer still appends to is scanned up to what is written now; damage is skipped
    as the drainer would skip it.
    """
    index = SeqIndex()
    for stream in spool.streams(spool_dir):
        if stream == skip:
            continue
        reader = StreamReader(stream)
        while entries := reader.read(_SCAN_SLICE):
            for entry in entries:
                if isinstance(entry.record, Segment):
                    index.note(entry.record.session_id, entry.record.seq)
    log.debug("spool %s: %d sessions with undrained finals", spool_dir, len(index))
    return index


async def next_seq(
    session_id: SessionId, index: SeqIndex, *, partials: PartialStore, segments: SegmentStore
) -> int:
    """The number the session's next final gets.

    Raises:
        StorageError: the segment store cannot be read.
    """
    try:
        counter = await partials.last_seq(session_id)
    except StorageError as exc:
        log.warning(
            "session %s: partial store counter unreadable, numbering without it: %s",
            session_id,
            exc,
        )
        counter = 0
    stored = max(counter, await segments.last_seq(session_id))
    return max(index.highest(session_id), stored) + 1
