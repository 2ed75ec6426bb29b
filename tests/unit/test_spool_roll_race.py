"""The reader at the end of a file while the writer appends to it and rolls: nothing is skipped.

The interleaving is forced, not hoped for: right after the reader found no more bytes in file 1
and looks at the stream's files (to decide whether file 1 is sealed), the writer's part completes
a record in file 1 and creates file 2, exactly as a live writer that commits a batch and rolls does.
A reader that calls file 1 finished from the read it made before the roll skips that record and
counts it as damage; the reader must read it again once it has seen the roll.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from earshot import metrics
from earshot.events import Segment, SessionId
from earshot.persistence import records, spool
from earshot.persistence.reading import StreamReader

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SESSION = SessionId("race")


def final(seq: int) -> Segment:
    return Segment(SESSION, seq, f"final {seq}", T0)


def corrupt_count() -> float:
    value: float = metrics.SPOOL_CORRUPT_RECORDS._value.get()
    return value


def live_stream(tmp_path: Path) -> Path:
    """A stream whose writer lock is held (a live writer) with final 1 in file 1."""
    stream = tmp_path / "stream"
    stream.mkdir()
    (stream / spool.segment_name(1)).write_bytes(records.encode(final(1)))
    return stream


def roll_after_eof(stream: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Make the writer append final 2 to file 1 and roll to file 2 when the reader first lists."""
    listed: Callable[[Path], list[int]] = spool.segment_numbers
    rolled: list[bool] = []

    def listing(path: Path) -> list[int]:
        if not rolled:
            rolled.append(True)
            with (stream / spool.segment_name(1)).open("ab") as segment:
                segment.write(records.encode(final(2)))
            (stream / spool.segment_name(2)).write_bytes(records.encode(final(3)))
        return listed(path)

    monkeypatch.setattr(spool, "segment_numbers", listing)
    return rolled


def test_a_record_completed_just_before_the_roll_is_read_not_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = live_stream(tmp_path)
    lock = spool.try_lock(stream / spool.WRITER_LOCK)
    assert lock is not None, "the test could not hold the writer lock"
    try:
        reader = StreamReader(stream)
        assert [e.record for e in reader.read(10)] == [final(1)]
        rolled = roll_after_eof(stream, monkeypatch)
        before = corrupt_count()
        entries = reader.read(10)
    finally:
        os.close(lock)

    assert rolled, "the reader never looked for a newer file at the end of file 1"
    assert [e.record for e in entries] == [final(2), final(3)]
    assert corrupt_count() == before, "a complete record was counted as damage"
