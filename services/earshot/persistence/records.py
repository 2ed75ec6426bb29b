"""What the spool holds, and its byte format: pure data, no I/O.

A record is framed as ``<length: u32 LE><crc32 of the payload: u32 LE><payload>``; the payload is
compact JSON with a one-letter kind: ``o`` a session opened, ``p`` a partial, ``f`` a final. A
frame whose length runs past the end of the data is *incomplete*; one whose CRC does not match is
*corrupt*. Times are Unix seconds (floats) in UTC.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from earshot.events import Partial, Segment, SessionId

HEADER = struct.Struct("<II")
# A bound that no real record comes near: a longer length field is damage, not a record.
MAX_PAYLOAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """A session (re)connected; ``user_id`` fills its ``sessions`` row when known."""

    session_id: SessionId
    user_id: str | None
    at: datetime


Record = SessionOpened | Partial | Segment


class CorruptRecord(ValueError):
    """A frame whose length or checksum is wrong."""


def _seconds(moment: datetime) -> float:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.timestamp()


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _fields(record: Record) -> dict[str, Any]:
    if isinstance(record, Segment):
        return {
            "k": "f",
            "s": record.session_id,
            "q": record.seq,
            "x": record.text,
            "t": _seconds(record.created_at),
        }
    if isinstance(record, Partial):
        return {
            "k": "p",
            "s": record.session_id,
            "q": record.seq,
            "x": record.text,
            "t": _seconds(record.at),
        }
    return {"k": "o", "s": record.session_id, "u": record.user_id, "t": _seconds(record.at)}


def encode(record: Record) -> bytes:
    """The framed bytes of one record."""
    payload = json.dumps(_fields(record), ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _record(fields: dict[str, Any]) -> Record:
    session = SessionId(fields["s"])
    at = _moment(fields["t"])
    kind = fields["k"]
    if kind == "f":
        return Segment(session, int(fields["q"]), fields["x"], at)
    if kind == "p":
        return Partial(session, int(fields["q"]), fields["x"], at)
    if kind == "o":
        return SessionOpened(session, fields["u"], at)
    raise CorruptRecord(f"unknown record kind {kind!r}")


def decode(data: bytes | memoryview, offset: int) -> tuple[Record, int] | None:
    """Decode the frame at ``offset``.

    Returns:
        The record and the offset just past it, or None when the frame is incomplete (the data ends
        inside it).

    Raises:
        CorruptRecord: the length is absurd, the checksum does not match, or the payload is not a
            record.
    """
    end_of_header = offset + HEADER.size
    if end_of_header > len(data):
        return None
    length, crc = HEADER.unpack_from(data, offset)
    if length > MAX_PAYLOAD_BYTES:
        raise CorruptRecord(f"record length {length} exceeds {MAX_PAYLOAD_BYTES}")
    end = end_of_header + length
    if end > len(data):
        return None
    payload = bytes(data[end_of_header:end])
    if zlib.crc32(payload) != crc:
        raise CorruptRecord("record checksum mismatch")
    try:
        return _record(json.loads(payload)), end
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecord(f"record payload is not a record: {exc}") from exc


def moment_of(record: Record) -> datetime:
    """When a record's event happened."""
    return record.created_at if isinstance(record, Segment) else record.at
