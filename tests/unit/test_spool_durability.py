"""The spool writer's promises under strain: fsync before acknowledgement, and a loud death.

The fsync order is checked by watching the real system calls: every write and fsync of the writer
thread is recorded with the size each file had when it was fsynced, and every acknowledged final
must lie inside the durable part of its file when its acknowledgement arrives.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from earshot import metrics
from earshot.events import Segment, SessionId
from earshot.persistence import spool
from earshot.persistence.spool import Position, SpoolError
from earshot.persistence.writing import SpoolWriter
from earshot.storage import backends
from tests.unit.test_spool_damage import drain, sealed

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def final(seq: int, session: str = "call-1") -> Segment:
    return Segment(SessionId(session), seq, f"final number {seq} of {session}", T0)


class FsyncLog:
    """The size of each file and the entries of each directory at its latest fsync.

    Files are keyed by path; directories by inode, which a rename keeps (a stream is built under a
    hidden name and renamed into place).
    """

    def __init__(self, real_fsync: Callable[[int], None]) -> None:
        self.durable: dict[str, int] = {}
        self.entries: dict[int, set[str]] = {}
        #: each directory's entries at its latest fsync, by name, with the inode each named
        self.inodes: dict[int, dict[str, int]] = {}
        self._real = real_fsync

    def fsync(self, fd: int) -> None:
        self._real(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(path):
            self.durable[path] = os.fstat(fd).st_size
        elif os.path.isdir(path):
            self.entries[os.fstat(fd).st_ino] = set(os.listdir(path))
            self.inodes[os.fstat(fd).st_ino] = {
                name: os.stat(os.path.join(path, name)).st_ino for name in os.listdir(path)
            }

    def named_durably(self, path: Path) -> bool:
        """Whether ``path``'s name was in its directory at the directory's latest fsync."""
        return path.name in self.entries.get(path.parent.stat().st_ino, set())


def test_a_new_acknowledgement_is_durable_by_its_name_and_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power loss an older acknowledgement must not come back: records would be read again."""
    log = FsyncLog(os.fsync)
    monkeypatch.setattr(os, "fsync", log.fsync)
    stream = tmp_path / "call-1"
    stream.mkdir()
    for ack in (spool.Ack(Position(1, 40), 1), spool.Ack(Position(2, 80), 3)):
        spool.write_ack(stream, ack)
        acked = stream / spool.ACK_FILE
        # its content was fsynced (under the temporary name it was written as)
        assert log.durable[str(stream / f".{spool.ACK_FILE}.tmp")] == acked.stat().st_size
        # the directory was fsynced after the rename: its durable entry is this file
        assert log.inodes[stream.stat().st_ino].get(spool.ACK_FILE) == acked.stat().st_ino
    assert spool.read_ack(stream) == spool.Ack(Position(2, 80), 3)


def up(component: str) -> float:
    """The gauge as a scrape sees it (its value is computed at collection)."""
    for family in metrics.PERSISTENCE_UP.collect():
        for sample in family.samples:
            if sample.labels == {"component": component}:
                return sample.value
    raise AssertionError(f"no earshot_persistence_up sample for {component}")


async def test_every_file_holding_an_acknowledged_final_is_fsynced_before_the_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FsyncLog(os.fsync)
    monkeypatch.setattr(os, "fsync", log.fsync)
    # Files of ~4 records: most group commits of the burst below roll in their middle.
    writer = SpoolWriter(tmp_path, segment_bytes=300, max_bytes=1 << 30)
    writer.start()
    not_durable: list[tuple[int, Position]] = []
    unnamed: list[tuple[int, Position]] = []

    async def acknowledged(segment: Segment) -> None:
        position = await writer.append(segment)
        path = writer.stream / spool.segment_name(position.file)
        if log.durable.get(str(path), 0) < position.offset:
            not_durable.append((segment.seq, position))
        if not (log.named_durably(path) and log.named_durably(writer.stream)):
            unnamed.append((segment.seq, position))

    try:
        for burst in range(5):
            await asyncio.gather(
                *(acknowledged(final(burst * 100 + n, f"s{n % 7}")) for n in range(1, 60))
            )
    finally:
        await writer.close()
    assert len(spool.segment_numbers(writer.stream)) > 20, "the test meant to roll many files"
    assert not_durable == []
    assert unnamed == [], "a file holding an acknowledged final has no durable directory entry"


async def test_a_new_streams_first_file_is_named_durably_before_its_first_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FsyncLog(os.fsync)
    monkeypatch.setattr(os, "fsync", log.fsync)
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    try:
        position = await writer.append(final(1))
        first = writer.stream / spool.segment_name(position.file)
        assert position.file == 1
        assert log.named_durably(writer.stream), "the stream's directory entry is not durable"
        assert log.named_durably(first), "the first segment's directory entry is not durable"
    finally:
        await writer.close()


async def test_a_writer_whose_thread_dies_fails_its_appends_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    try:
        await writer.append(final(1))
        assert writer.alive
        assert up("spool_writer") == 1

        def broken(appends: object) -> None:
            raise RuntimeError("a bug in the writer thread")

        monkeypatch.setattr(writer, "_commit", broken)
        with pytest.raises(SpoolError, match="writer thread stopped"):
            await asyncio.wait_for(writer.append(final(2)), 5.0)
        with pytest.raises(SpoolError, match="writer thread stopped"):
            await asyncio.wait_for(writer.append(final(3)), 5.0)
        with pytest.raises(SpoolError, match="writer thread stopped"):
            writer.append_nowait(final(4))
        assert not writer.alive
        assert up("spool_writer") == 0
    finally:
        await writer.close()


async def test_a_drained_stream_loses_its_records_durably_before_the_rest_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream directory a power loss brings back must not hold records to store again."""
    segments = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    try:
        spool_dir = tmp_path / "spool"
        stream = await sealed(spool_dir, final(1), final(2))
        inode = stream.stat().st_ino
        log = FsyncLog(os.fsync)
        monkeypatch.setattr(os, "fsync", log.fsync)
        await drain(spool_dir, segments)
        assert [s.seq for s in await segments.segments(SessionId("call-1"))] == [1, 2]
        assert not stream.exists()
        # the directory's last fsync saw its acknowledgement at most, no segment file
        assert inode in log.entries
        assert [n for n in log.entries[inode] if spool.segment_number(n) is not None] == []
    finally:
        await segments.aclose()
