"""The spool: an append-only, crash-safe queue of records on local disk, shared by a gateway (the
writer) and a drainer (the reader), possibly in two containers sharing the directory.

Layout: every writer incarnation (a gateway process) appends to a *stream* of its own, a directory
``<spool_dir>/<stream>/`` named so that older streams sort first::

    writer.lock    flock'ed exclusively by the live writer: a stream whose lock is free is sealed
    drain.lock     flock'ed exclusively by the one drainer of the stream
    00000001.seg   segment files of framed records (:mod:`earshot.persistence.records`),
    00000002.seg   rolled when one exceeds ``segment_bytes``
    acked          "<file> <offset> <records>": where draining has got to, replaced atomically

The writer is :mod:`earshot.persistence.writing` (with the fsync policy), the reader
:mod:`earshot.persistence.reading`; this module holds the layout they share: names, the
acknowledgement file and the locks. Blocking file I/O: call it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SEGMENT_SUFFIX = ".seg"
ACK_FILE = "acked"
WRITER_LOCK = "writer.lock"
DRAIN_LOCK = "drain.lock"
# Bounds no real spool comes near: larger numbers in an acknowledgement are damage.
MAX_FILE = 10**8 - 1
MAX_OFFSET = 1 << 40


class SpoolError(Exception):
    """The spool directory cannot be used."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in a stream: a segment file's number and a byte offset in it."""

    file: int
    offset: int


@dataclass(frozen=True, slots=True)
class Ack:
    """How far a stream is drained: the position and the number of records before it."""

    position: Position
    records: int


def segment_name(number: int) -> str:
    """The file name of segment ``number``."""
    return f"{number:08d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The number of a segment file's name; None for any other name (a stray file)."""
    stem = name[: -len(SEGMENT_SUFFIX)]
    if not name.endswith(SEGMENT_SUFFIX) or not stem.isascii() or not stem.isdigit():
        return None
    return int(stem)


def segment_numbers(stream: Path) -> list[int]:
    """The numbers of a stream's segment files, ascending (other names are not segments)."""
    try:
        names = os.listdir(stream)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in map(segment_number, names) if n is not None)


def streams(spool_dir: Path) -> list[Path]:
    """Every stream directory of a spool, oldest first (hidden names and files are not streams)."""
    try:
        return sorted(p for p in spool_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_ack(stream: Path) -> Ack:
    """The stream's acknowledgement; the start of its first file when none was written yet.

    A missing, torn or nonsensical file (a crash before the rename, or damage) replays from the
    oldest file: replays are harmless because every store write is idempotent.
    """
    try:
        text = (stream / ACK_FILE).read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return _start(stream)
    ack = parse_ack(text)
    return ack if ack is not None else _start(stream)


def parse_ack(text: str) -> Ack | None:
    """An acknowledgement file's content, or None when it is not one (torn or damaged)."""
    fields = text.split()
    if len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields):
        return None
    file, offset, count = map(int, fields)
    if file < 1 or offset > MAX_OFFSET or file > MAX_FILE:
        return None
    return Ack(Position(file, offset), count)


def _start(stream: Path) -> Ack:
    numbers = segment_numbers(stream)
    return Ack(Position(numbers[0] if numbers else 1, 0), 0)


def write_ack(stream: Path, ack: Ack) -> None:
    """Replace the acknowledgement atomically and durably (write, fsync, rename, fsync the directory).

    The directory's fsync makes the rename durable: after a power loss the stream's records up to
    ``ack`` are not read (and stored) again.
    """
    temporary = stream / f".{ACK_FILE}.tmp"
    with temporary.open("w") as out:
        out.write(f"{ack.position.file} {ack.position.offset} {ack.records}\n")
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(stream / ACK_FILE)
    fsync_dir(stream)


def remove_stream(stream: Path) -> None:
    """Remove a drained stream so that a power loss cannot bring its records back.

    Its segment files go first and the directory is fsynced, then the rest (its acknowledgement, its
    locks): a directory that comes back after a power loss holds no record to read again, whatever
    else of it comes back.
    """
    with contextlib.suppress(FileNotFoundError):
        for number in segment_numbers(stream):
            (stream / segment_name(number)).unlink(missing_ok=True)
        fsync_dir(stream)
    shutil.rmtree(stream, ignore_errors=True)


def unacked_bytes(stream: Path, ack: Ack, *, sizes: dict[int, int] | None = None) -> int:
    """Bytes of the stream past its acknowledgement (file sizes from ``sizes`` where given)."""
    total = 0
    for number in segment_numbers(stream) if sizes is None else sorted(sizes):
        if number < ack.position.file:
            continue
        size = sizes[number] if sizes is not None else _size(stream / segment_name(number))
        total += size - (ack.position.offset if number == ack.position.file else 0)
    return max(total, 0)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def try_lock(path: Path, *, shared: bool = False) -> int | None:
    """Open and flock ``path`` without waiting: the descriptor (keep it to hold the lock), or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def writer_alive(stream: Path) -> bool:
    """Whether a live writer holds the stream (otherwise it is sealed: nothing more will come)."""
    fd = try_lock(stream / WRITER_LOCK, shared=True)
    if fd is None:
        return True
    os.close(fd)
    return False


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
