"""The spool's records, writer and reader, on a real directory (earshot.persistence)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import records, resuming, spool
from earshot.persistence.reading import StreamReader
from earshot.persistence.records import SessionOpened
from earshot.persistence.spool import Ack, Position
from earshot.persistence.writing import SpoolWriter

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SESSION = SessionId("call-1")


def final(seq: int, text: str = "", session_id: SessionId = SESSION) -> Segment:
    return Segment(session_id, seq, text or f"final {seq}", T0)


def partial(seq: int, text: str, session_id: SessionId = SESSION) -> Partial:
    return Partial(session_id, seq, text, T0)


def corrupt_count() -> float:
    value: float = metrics.SPOOL_CORRUPT_RECORDS._value.get()
    return value


@pytest_asyncio.fixture
async def writer(tmp_path: Path) -> AsyncIterator[SpoolWriter]:
    opened = SpoolWriter(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 20)
    opened.start()
    yield opened
    await opened.close()


def test_records_round_trip_through_their_frames() -> None:
    written: list[records.Record] = [
        SessionOpened(SESSION, "alice", T0),
        partial(1, "你好 wor"),
        final(1, "你好 world"),
        SessionOpened(SESSION, None, T0),
    ]
    data = b"".join(records.encode(r) for r in written)
    offset, read = 0, []
    while offset < len(data):
        decoded = records.decode(data, offset)
        assert decoded is not None
        record, offset = decoded
        read.append(record)
    assert read == written


def test_a_frame_cut_short_is_incomplete_and_a_changed_byte_is_corrupt() -> None:
    frame = records.encode(final(1, "hello"))
    assert records.decode(frame[:-1], 0) is None
    assert records.decode(frame[:3], 0) is None
    damaged = frame[:-1] + bytes([frame[-1] ^ 0xFF])
    with pytest.raises(records.CorruptRecord, match="checksum"):
        records.decode(damaged, 0)


async def test_appended_records_are_read_back_in_order(writer: SpoolWriter) -> None:
    writer.append_nowait(partial(1, "he"))
    first = await writer.append(final(1, "hello"))
    writer.append_nowait(partial(2, "wo"))
    second = await writer.append(final(2, "world"))
    assert first < second
    entries = await asyncio.to_thread(StreamReader(writer.stream).read, 10)
    assert [e.record for e in entries] == [
        partial(1, "he"),
        final(1, "hello"),
        partial(2, "wo"),
        final(2, "world"),
    ]
    assert entries[1].end == first
    assert entries[3].end == second


async def test_finals_appended_together_share_fsyncs(writer: SpoolWriter) -> None:
    def fsyncs() -> float:
        return sum(
            s.value
            for m in metrics.SPOOL_FSYNC_SECONDS.collect()
            for s in m.samples
            if s.name.endswith("_count")
        )

    before = fsyncs()
    await asyncio.gather(*(writer.append(final(seq)) for seq in range(1, 201)))
    assert fsyncs() - before < 200


async def test_segment_files_roll_and_the_reader_follows_them(tmp_path: Path) -> None:
    small = SpoolWriter(tmp_path / "spool", segment_bytes=200, max_bytes=1 << 20)
    small.start()
    try:
        for seq in range(1, 21):
            await small.append(final(seq))
    finally:
        await small.close()
    assert len(spool.segment_numbers(small.stream)) > 3
    entries = StreamReader(small.stream).read(100)
    assert [e.record.seq for e in entries if isinstance(e.record, Segment)] == list(range(1, 21))


async def test_a_record_being_written_by_a_live_writer_is_waited_for(
    writer: SpoolWriter,
) -> None:
    await writer.append(final(1))
    path = writer.stream / spool.segment_name(1)
    frame = records.encode(final(2))
    with path.open("ab") as segment:
        segment.write(frame[:5])
    reader = StreamReader(writer.stream)
    before = corrupt_count()
    assert len(reader.read(10)) == 1
    assert reader.read(10) == []
    assert corrupt_count() == before
    with path.open("ab") as segment:
        segment.write(frame[5:])
    assert [e.record for e in reader.read(10)] == [final(2)]


async def test_a_torn_tail_of_a_sealed_stream_is_skipped_with_a_log_line_and_a_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed = SpoolWriter(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 20)
    crashed.start()
    for seq in (1, 2, 3):
        await crashed.append(final(seq))
    await crashed.close()
    path = crashed.stream / spool.segment_name(1)
    path.write_bytes(path.read_bytes()[:-4])
    before = corrupt_count()
    with caplog.at_level(logging.WARNING, logger="earshot.persistence.reading"):
        reader = StreamReader(crashed.stream)
        entries = reader.read(10)
    assert [e.record for e in entries] == [final(1), final(2)]
    assert corrupt_count() == before + 1
    assert "truncated record" in caplog.text
    assert reader.exhausted()


async def test_draining_goes_on_in_the_next_file_after_a_corrupt_record(tmp_path: Path) -> None:
    crashed = SpoolWriter(tmp_path / "spool", segment_bytes=100, max_bytes=1 << 20)
    crashed.start()
    for seq in range(1, 7):
        await crashed.append(final(seq))
    await crashed.close()
    first = crashed.stream / spool.segment_name(1)
    data = bytearray(first.read_bytes())
    data[-2] ^= 0xFF
    first.write_bytes(bytes(data))
    before = corrupt_count()
    seqs = [e.record.seq for e in StreamReader(crashed.stream).read(100)]  # type: ignore[union-attr]
    assert corrupt_count() == before + 1
    assert seqs == sorted(seqs)
    assert seqs[-1] == 6
    assert len(seqs) == 5


def test_a_missing_or_torn_acknowledgement_starts_at_the_oldest_file(tmp_path: Path) -> None:
    stream = tmp_path / "stream"
    stream.mkdir()
    for number in (3, 4):
        (stream / spool.segment_name(number)).touch()
    assert spool.read_ack(stream) == Ack(Position(3, 0), 0)
    (stream / spool.ACK_FILE).write_text("4 1")
    assert spool.read_ack(stream) == Ack(Position(3, 0), 0)
    spool.write_ack(stream, Ack(Position(4, 17), 9))
    assert spool.read_ack(stream) == Ack(Position(4, 17), 9)


async def test_the_spool_is_full_past_its_bound_until_it_is_acknowledged(tmp_path: Path) -> None:
    bounded = SpoolWriter(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=500)
    bounded.start()
    try:
        position = Position(1, 0)
        while not bounded.full:
            position = await bounded.append(final(position.offset + 1))
        spool.write_ack(bounded.stream, Ack(position, 0))
        for _ in range(50):
            if not bounded.full:
                break
            await asyncio.sleep(0.05)
        assert not bounded.full
    finally:
        await bounded.close()


async def test_a_stream_is_sealed_once_its_writer_closes(writer: SpoolWriter) -> None:
    assert spool.writer_alive(writer.stream)
    await writer.close()
    assert not spool.writer_alive(writer.stream)


async def test_the_resume_index_holds_the_highest_undrained_final_per_session(
    tmp_path: Path,
) -> None:
    earlier = SpoolWriter(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 20)
    earlier.start()
    for seq in (1, 2, 3):
        await earlier.append(final(seq))
    await earlier.append(final(7, session_id=SessionId("other")))
    await earlier.close()
    index = resuming.scan(tmp_path / "spool")
    assert index.highest(SESSION) == 3
    assert index.highest(SessionId("other")) == 7
    assert index.highest(SessionId("unknown")) == 0
