"""A live writer and a concurrent reader, seeded: every acknowledged final is read once, in order.

Each seed draws tiny, varying segment sizes (so files roll constantly, often in the middle of a
group commit), bursts of finals and partials from several sessions, pauses between them, and a
reader that polls, acknowledges, deletes acknowledged files as the drainer does, and now and then
starts again from the acknowledgement as a restarted persister would. The reader must never take a
record still being written for damage, and must read every final the writer acknowledged exactly
once, in the order of its acknowledgements per session. Rerun one case with
``pytest -k 'seed_7'``; raise ``SEEDS`` to search longer.
"""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from earshot import metrics
from earshot.events import Partial, Segment, SessionId
from earshot.persistence import spool
from earshot.persistence.reading import StreamReader
from earshot.persistence.spool import Ack
from earshot.persistence.writing import SpoolWriter

SEEDS = 24
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SESSIONS = [SessionId(f"s{n}") for n in range(4)]


def damage_count() -> float:
    value: float = metrics.SPOOL_CORRUPT_RECORDS._value.get()
    return value


class Drain:
    """A reader thread that reads, acknowledges and restarts as the drainer and a restart would."""

    def __init__(self, stream: Path, rng: random.Random) -> None:
        self.stream = stream
        self.rng = rng
        self.finals: list[Segment] = []
        self.acked_finals = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="stress-reader")

    def _run(self) -> None:
        try:
            reader = StreamReader(self.stream)
            while True:
                stopping = self.stop.is_set()
                entries = reader.read(self.rng.randint(1, 8))
                self.finals += [e.record for e in entries if isinstance(e.record, Segment)]
                if entries and self.rng.random() < 0.5:
                    self._acknowledge(reader, len(entries))
                if self.rng.random() < 0.05:
                    # A restarted persister: everything past the acknowledgement is read again.
                    del self.finals[self.acked_finals :]
                    reader = StreamReader(self.stream)
                if not entries:
                    if stopping and reader.exhausted():
                        return
                    self.stop.wait(self.rng.choice((0, 0, 0.0005, 0.002)))
        except BaseException as exc:
            self.error = exc

    def _acknowledge(self, reader: StreamReader, count: int) -> None:
        reader.ack = Ack(reader.position, reader.ack.records + count)
        spool.write_ack(self.stream, reader.ack)
        self.acked_finals = len(self.finals)
        for number in spool.segment_numbers(self.stream):
            if number < reader.ack.position.file:
                (self.stream / spool.segment_name(number)).unlink(missing_ok=True)


async def write_and_read(tmp_path: Path, seed: int) -> tuple[list[Segment], Drain]:
    rng = random.Random(seed)
    writer = SpoolWriter(tmp_path, segment_bytes=rng.randint(40, 400), max_bytes=1 << 30)
    writer.start()
    drain = Drain(writer.stream, random.Random(seed + 1))
    drain.thread.start()
    acknowledged: list[Segment] = []
    next_seq = dict.fromkeys(SESSIONS, 1)

    async def one_final(session: SessionId) -> None:
        seq = next_seq[session]
        next_seq[session] += 1
        segment = Segment(session, seq, "w" * rng.randint(1, 60), T0)
        await writer.append(segment)
        acknowledged.append(segment)

    try:
        for _ in range(rng.randint(20, 40)):
            for _ in range(rng.randint(0, 5)):
                session = rng.choice(SESSIONS)
                writer.append_nowait(
                    Partial(session, next_seq[session], "p" * rng.randint(1, 90), T0)
                )
            # Each session's finals are awaited in order, sessions concurrently: a group commit.
            sessions = rng.sample(SESSIONS, rng.randint(1, len(SESSIONS)))
            await asyncio.gather(*(one_final(s) for s in sessions))
            await asyncio.sleep(rng.choice((0, 0, 0.0005, 0.003)))
    finally:
        await writer.close()
        drain.stop.set()
        await asyncio.to_thread(drain.thread.join, 30.0)
    return acknowledged, drain


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed_{s}") for s in range(SEEDS)])
async def test_every_acknowledged_final_is_read_exactly_once_in_order(
    tmp_path: Path, seed: int
) -> None:
    before = damage_count()
    acknowledged, drain = await write_and_read(tmp_path, seed)
    assert drain.error is None, f"the reader failed: {drain.error!r}"
    assert not drain.thread.is_alive(), "the reader did not reach the end of the sealed stream"
    assert damage_count() == before, "a record a live writer wrote was taken for damage"
    for session in SESSIONS:
        told = [(s.seq, s.text) for s in acknowledged if s.session_id == session]
        read = [(s.seq, s.text) for s in drain.finals if s.session_id == session]
        assert read == told, f"session {session}"
