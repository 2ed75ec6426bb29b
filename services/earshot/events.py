"""Transcript values shared by every layer: pure data, no I/O.

A recogniser emits :class:`Recognition` values; the gateway numbers finals and turns them into
:class:`Segment` rows and :class:`Partial` snapshots for the stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import NewType

SessionId = NewType("SessionId", str)

MAX_SESSION_ID_LENGTH = 64
#: A copy of ``earshot_operator.dataplane.SESSION_ID_PATTERN`` (the data plane cannot import the
#: operator); tests/unit/test_session_rules.py checks that both, and the CRDs, say the same.
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)


class InvalidSessionId(ValueError):
    """A session id that cannot be stored (the `sessions.id` column is VARCHAR(64))."""


def parse_session_id(raw: str) -> SessionId:
    """Validate a session id taken from a URL or a resource.

    Args:
        raw: the id as the client sent it.

    Returns:
        The id, typed.

    Raises:
        InvalidSessionId: when it is empty, longer than 64 characters, or holds characters other than
            letters, digits, ``.``, ``_``, ``:`` and ``-`` (or starts with punctuation).
    """
    if not raw:
        raise InvalidSessionId("session id is empty")
    if len(raw) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionId(
            f"session id is {len(raw)} characters long; at most {MAX_SESSION_ID_LENGTH} are allowed"
        )
    if not _SESSION_ID.fullmatch(raw):
        raise InvalidSessionId(
            "session id may hold only letters, digits, '.', '_', ':' and '-', "
            "and must start with a letter or digit"
        )
    return SessionId(raw)


@dataclass(frozen=True, slots=True)
class Recognition:
    """What a recogniser says about the audio of one stream so far.

    A partial (``is_final`` false) replaces the previous partial of the same segment; a final closes the
    segment, and the next recognition starts a new one.

    ``heard`` is the ``time.perf_counter()`` at which the recogniser was handed the audio whose
    processing produced it, for a recogniser that may return it with a later call (Triton pipelines
    its requests); None means the audio of the call that returns it. It says when, not what:
    recognitions that differ only in it are equal.
    """

    text: str
    is_final: bool
    heard: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Partial:
    """The current, not yet final, text of a session: what the partial store keeps."""

    session_id: SessionId
    seq: int
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Segment:
    """A final segment of a session, numbered from 1 without gaps.

    A Talk call's segments also say who spoke (``speaker``) and when (``started_at`` to
    ``ended_at``); telephony sessions have one speaker and leave them None.
    """

    session_id: SessionId
    seq: int
    text: str
    created_at: datetime
    speaker: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
