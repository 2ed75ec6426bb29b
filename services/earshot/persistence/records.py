"""What the spool holds, and its byte format: pure data, no I/O.

A record is framed as ``<length: u32 LE><crc32 of the payload: u32 LE><payload>``; the payload is
compact JSON with a one-letter kind: ``o`` a session opened (with ``l`` the language it is
declared to speak, when declared), ``p`` a partial, ``f`` a final (with
``w`` its speaker, ``b`` and ``e`` when the speech began and ended, when known: Talk calls). A
frame whose length runs past the end of the data is *incomplete*; one whose CRC does not match is
*corrupt*: framing cannot be trusted past either. A frame that is intact but whose payload this
version cannot store (an unknown kind, as a newer writer may write, or a value out of range) is
*unreadable*: it is one record, and what follows it is read as usual. Times are Unix seconds
(floats) in UTC.

Every value a record carries fits the stores' columns (:func:`check`): :func:`encode` refuses one
that does not, so nothing out of range enters the spool, and :func:`decode` refuses one that got in
anyway, so it cannot wedge draining.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from earshot.events import InvalidSessionId, Partial, Segment, SessionId, parse_session_id

HEADER = struct.Struct("<II")
# A bound that no real record comes near: a longer length field is damage, not a record.
MAX_PAYLOAD_BYTES = 1 << 20
# The stores' columns: segment_seq INT, content TEXT (bytes), user_id VARCHAR(64), created_at
# DATETIME (years 1000 to 9999 in MariaDB).
MAX_SEQ = 2**31 - 1
MAX_TEXT_BYTES = 65_535
MAX_USER_ID_LENGTH = 64
MAX_SPEAKER_LENGTH = 64  # segments.speaker VARCHAR(64)
MAX_LANGUAGE_LENGTH = 16  # sessions.language VARCHAR(16)
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """A session (re)connected; ``user_id`` and ``language`` fill its ``sessions`` row when known."""

    session_id: SessionId
    user_id: str | None
    at: datetime
    language: str | None = None


Record = SessionOpened | Partial | Segment


class CorruptRecord(ValueError):
    """A frame whose length or checksum is wrong."""


class UnreadableRecord(ValueError):
    """An intact frame whose payload cannot be stored; ``end`` is the offset just past it."""

    def __init__(self, why: str, end: int) -> None:
        """Say why the record is refused and where the next one starts."""
        super().__init__(why)
        self.end = end


class OutOfRange(ValueError):
    """A record holds a value that does not fit the stores' columns."""


def check(record: Record) -> None:
    """Refuse a record whose values do not fit the stores' columns.

    Raises:
        OutOfRange: which value, and its bound.
    """
    try:
        parse_session_id(record.session_id)
    except InvalidSessionId as exc:
        raise OutOfRange(str(exc)) from None
    moment = moment_of(record)
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if not EARLIEST <= aware <= LATEST:
        raise OutOfRange(f"time {moment.isoformat()} is outside {EARLIEST.year}..{LATEST.year}")
    if isinstance(record, SessionOpened):
        if record.user_id is not None and len(record.user_id) > MAX_USER_ID_LENGTH:
            raise OutOfRange(
                f"user id is {len(record.user_id)} characters long; "
                f"at most {MAX_USER_ID_LENGTH} are allowed"
            )
        if record.language is not None and len(record.language) > MAX_LANGUAGE_LENGTH:
            raise OutOfRange(
                f"language is {len(record.language)} characters long; "
                f"at most {MAX_LANGUAGE_LENGTH} are allowed"
            )
        return
    if not 1 <= record.seq <= MAX_SEQ:
        raise OutOfRange(f"segment number {record.seq} is outside 1..{MAX_SEQ}")
    size = len(record.text.encode())
    if size > MAX_TEXT_BYTES:
        raise OutOfRange(f"text is {size} bytes long; at most {MAX_TEXT_BYTES} are allowed")
    if isinstance(record, Segment):
        _check_speech(record)


def _check_speech(segment: Segment) -> None:
    if segment.speaker is not None and len(segment.speaker) > MAX_SPEAKER_LENGTH:
        raise OutOfRange(
            f"speaker is {len(segment.speaker)} characters long; "
            f"at most {MAX_SPEAKER_LENGTH} are allowed"
        )
    for moment in (segment.started_at, segment.ended_at):
        if moment is not None and not EARLIEST <= _aware(moment) <= LATEST:
            raise OutOfRange(f"time {moment.isoformat()} is outside {EARLIEST.year}..{LATEST.year}")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _seconds(moment: datetime) -> float:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.timestamp()


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _fields(record: Record) -> dict[str, Any]:
    if isinstance(record, Segment):
        speech = {
            key: value
            for key, value in (
                ("w", record.speaker),
                ("b", None if record.started_at is None else _seconds(record.started_at)),
                ("e", None if record.ended_at is None else _seconds(record.ended_at)),
            )
            if value is not None
        }
        return {
            "k": "f",
            "s": record.session_id,
            "q": record.seq,
            "x": record.text,
            "t": _seconds(record.created_at),
            **speech,
        }
    if isinstance(record, Partial):
        return {
            "k": "p",
            "s": record.session_id,
            "q": record.seq,
            "x": record.text,
            "t": _seconds(record.at),
        }
    opened = {"k": "o", "s": record.session_id, "u": record.user_id, "t": _seconds(record.at)}
    return opened if record.language is None else {**opened, "l": record.language}


def encode(record: Record) -> bytes:
    """The framed bytes of one record.

    Raises:
        OutOfRange: a value does not fit the stores (see :func:`check`).
    """
    check(record)
    payload = json.dumps(_fields(record), ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _record(fields: dict[str, Any]) -> Record:
    kind = fields["k"]
    if kind not in ("f", "p", "o"):
        raise ValueError(f"unknown record kind {kind!r}")
    session = SessionId(_typed(fields, "s", str))
    seconds = _typed(fields, "t", float)
    try:
        at = _moment(seconds)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {seconds!r} is out of range") from None
    record: Record
    if kind == "o":
        user = fields["u"]
        record = SessionOpened(
            session,
            None if user is None else _typed(fields, "u", str),
            at,
            language=_typed(fields, "l", str) if "l" in fields else None,
        )
    elif kind == "f":
        record = Segment(
            session,
            _typed(fields, "q", int),
            _typed(fields, "x", str),
            at,
            speaker=_typed(fields, "w", str) if "w" in fields else None,
            started_at=_optional_moment(fields, "b"),
            ended_at=_optional_moment(fields, "e"),
        )
    else:
        record = Partial(session, _typed(fields, "q", int), _typed(fields, "x", str), at)
    check(record)
    return record


def _optional_moment(fields: dict[str, Any], key: str) -> datetime | None:
    if key not in fields:
        return None
    seconds = _typed(fields, key, float)
    try:
        return _moment(seconds)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {seconds!r} is out of range") from None


def _typed(fields: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = fields[key]
    # bool is an int to Python, but never a valid field; an int is a valid float (JSON).
    valid = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, valid):
        raise ValueError(f"field {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def decode(data: bytes | memoryview, offset: int) -> tuple[Record, int] | None:
    """Decode the frame at ``offset``.

    Returns:
        The record and the offset just past it, or None when the frame is incomplete (the data ends
        inside it).

    Raises:
        CorruptRecord: the length is absurd or the checksum does not match.
        UnreadableRecord: the frame is intact but its payload is not a record this version can
            store (an unknown kind, a missing field, a value out of range).
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
        fields = json.loads(payload)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        return _record(fields), end
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableRecord(f"record payload is not a storable record: {exc}", end) from None


def moment_of(record: Record) -> datetime:
    """When a record's event happened."""
    return record.created_at if isinstance(record, Segment) else record.at
