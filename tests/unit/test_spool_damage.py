"""A spool with each kind of damage: what is intact is read and stored, the rest is set aside.

Every case here once stopped storage for every stream (or dropped good records): stray files and
odd names are quarantined, a bad acknowledgement replays, an intact record this version cannot
store is skipped alone, and values that do not fit the stores never enter the spool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import journaling, quarantining, records, resuming, spool
from earshot.persistence.draining import Drainer, DrainPolicy
from earshot.persistence.reading import StreamReader
from earshot.persistence.records import SessionOpened
from earshot.persistence.writing import SpoolWriter
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import SegmentStore

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SESSION = SessionId("call-1")
POLICY = DrainPolicy(batch_size=10, poll_seconds=0.01, retry_max_seconds=0.05)


def final(seq: int, session_id: SessionId = SESSION) -> Segment:
    return Segment(session_id, seq, f"final {seq}", T0)


def frame(fields: dict[str, Any]) -> bytes:
    """A CRC-valid frame around any payload, as a newer or a broken writer could write it."""
    payload = json.dumps(fields).encode()
    return records.HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def counter(metric: Any) -> float:
    value: float = metric._value.get()
    return value


@pytest_asyncio.fixture
async def segments(tmp_path: Path) -> AsyncIterator[SegmentStore]:
    store = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    yield store
    await store.aclose()


async def sealed(spool_dir: Path, *finals: Segment) -> Path:
    writer = SpoolWriter(spool_dir, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    for segment in finals:
        await writer.append(segment)
    await writer.close()
    return writer.stream


async def drain(spool_dir: Path, segments: SegmentStore) -> None:
    drainer = Drainer(
        spool_dir, partials=MemoryPartialStore(ttl_seconds=60), segments=segments, policy=POLICY
    )
    drainer.stop(5.0)
    await asyncio.wait_for(drainer.run(), 10.0)


async def stored(segments: SegmentStore, session: SessionId = SESSION) -> list[int]:
    return [s.seq for s in await segments.segments(session)]


async def test_stray_files_are_quarantined_and_every_stream_still_drains(
    tmp_path: Path, segments: SegmentStore, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    first = await sealed(spool_dir, final(1), final(2))
    second = await sealed(spool_dir, final(3, SessionId("other")))
    (first / "backup.seg").write_text("not a segment")
    (first / "notes.txt").write_text("left by someone")
    (second / spool.segment_name(7)).mkdir()
    (spool_dir / "stray-file").write_text("not a stream")
    before = counter(metrics.SPOOL_QUARANTINED)
    with caplog.at_level(logging.WARNING, logger="earshot.persistence.quarantining"):
        await drain(spool_dir, segments)
    assert await stored(segments) == [1, 2]
    assert await stored(segments, SessionId("other")) == [3]
    assert counter(metrics.SPOOL_QUARANTINED) == before + 4
    assert caplog.text.count("quarantined") == 4
    kept = sorted(p.name.rsplit(".", 1)[0] for p in (spool_dir / ".quarantine").iterdir())
    assert kept == sorted(
        [
            f"{first.name}__backup.seg",
            f"{first.name}__notes.txt",
            f"{second.name}__{spool.segment_name(7)}",
            "stray-file",
        ]
    )
    assert spool.streams(spool_dir) == []


async def test_a_stray_segment_name_does_not_stop_a_live_writer(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    try:
        other = await sealed(tmp_path, final(1, SessionId("other")))
        (other / "x.seg").write_text("garbage")
        await asyncio.sleep(0.5)  # a few of the writer's refreshes of the spool's depth
        await asyncio.wait_for(writer.append(final(1)), 5.0)
        assert writer.alive
    finally:
        await writer.close()


async def test_a_gateway_starts_on_a_damaged_spool(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    damaged = await sealed(spool_dir, final(1), final(2))
    (damaged / "copy.seg").write_text("garbage")
    (damaged / spool.ACK_FILE).write_text("1 -40 0\n")
    settings = Settings(cache_dir=tmp_path, spool_dir=spool_dir, persister="sidecar")
    segments = await backends.open_segment_store(f"sqlite:///{tmp_path / 'seg.db'}")
    try:
        async with journaling.open_journal(
            settings, partials=MemoryPartialStore(ttl_seconds=60), segments=segments
        ) as journal:
            assert await journal.open_session(SESSION) == 3
            assert journal.healthy
    finally:
        await segments.aclose()


def test_a_malformed_acknowledgement_replays_from_the_oldest_file(tmp_path: Path) -> None:
    stream = tmp_path / "stream"
    stream.mkdir()
    (stream / spool.segment_name(2)).touch()
    for text in ("1 -40 0\n", "-1 0 0\n", "0 0 0\n", "2 x 3\n", "2 99999999999999999 0\n", ""):
        (stream / spool.ACK_FILE).write_text(text)
        assert spool.read_ack(stream) == spool.Ack(spool.Position(2, 0), 0), text
    (stream / spool.ACK_FILE).write_text("1 -40 0\n")
    assert quarantining.tidy(tmp_path) == 1
    assert not (stream / spool.ACK_FILE).exists()


async def test_an_unknown_record_kind_is_skipped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await sealed(tmp_path, final(1))
    with (stream / spool.segment_name(1)).open("ab") as segment:
        segment.write(frame({"k": "z", "s": "call-1", "t": 1.0, "new": "field"}))
        segment.write(records.encode(final(2)))
    before = counter(metrics.SPOOL_UNREADABLE_RECORDS)
    with caplog.at_level(logging.WARNING, logger="earshot.persistence.reading"):
        entries = StreamReader(stream).read(10)
    assert [e.record for e in entries] == [final(1), final(2)]
    assert counter(metrics.SPOOL_UNREADABLE_RECORDS) == before + 1
    assert "unknown record kind 'z'" in caplog.text


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"k": "f", "s": "call-1", "q": 2, "x": "t", "t": 1e20}, "out of range"),
        ({"k": "f", "s": "call-1", "q": 2, "x": "t", "t": 253402300799.5}, "outside 1000..9999"),
        ({"k": "f", "s": "call-1", "q": 2**31, "x": "t", "t": 1.0}, "segment number"),
        ({"k": "f", "s": "call-1", "q": 0, "x": "t", "t": 1.0}, "segment number"),
        ({"k": "f", "s": "call-1", "q": "2", "x": "t", "t": 1.0}, "field 'q' is str"),
        ({"k": "f", "s": "call-1", "q": 2, "x": "é" * 40_000, "t": 1.0}, "bytes long"),
        ({"k": "f", "s": "bad id!", "q": 2, "x": "t", "t": 1.0}, "session id"),
        ({"k": "o", "s": "call-1", "u": "u" * 65, "t": 1.0}, "user id"),
        ({"k": "f", "s": "call-1", "q": 2, "t": 1.0}, "'x'"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_an_intact_record_out_of_range_is_refused_alone(fields: Any, why: str) -> None:
    data = frame(fields) + records.encode(final(3))
    with pytest.raises(records.UnreadableRecord, match=why) as refused:
        records.decode(data, 0)
    decoded = records.decode(data, refused.value.end)
    assert decoded is not None
    assert decoded[0] == final(3)


async def test_values_that_do_not_fit_the_stores_never_enter_the_spool(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, segment_bytes=1 << 20, max_bytes=1 << 30)
    writer.start()
    try:
        with pytest.raises(records.OutOfRange, match="65535"):
            await writer.append(Segment(SESSION, 1, "x" * 65_536, T0))
        with pytest.raises(records.OutOfRange, match="segment number"):
            writer.append_nowait(Partial(SESSION, 0, "x", T0))
        with pytest.raises(records.OutOfRange, match=r"outside 1000\.\.9999"):
            writer.append_nowait(SessionOpened(SESSION, None, datetime(999, 1, 1, tzinfo=UTC)))
        await writer.append(Segment(SESSION, 1, "x" * 65_535, T0))
    finally:
        await writer.close()
    assert [e.record.seq for e in StreamReader(writer.stream).read(10)] == [1]  # type: ignore[union-attr]


async def test_damaged_records_stop_neither_draining_nor_the_resume_index(
    tmp_path: Path, segments: SegmentStore
) -> None:
    stream = await sealed(tmp_path, final(1))
    with (stream / spool.segment_name(1)).open("ab") as segment:
        segment.write(frame({"k": "f", "s": "call-1", "q": 9, "x": "t", "t": 1e20}))
        segment.write(records.encode(final(2)))
    assert resuming.scan(tmp_path).highest(SESSION) == 2
    await drain(tmp_path, segments)
    assert await stored(segments) == [1, 2]
