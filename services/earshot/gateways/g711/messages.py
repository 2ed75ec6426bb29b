"""Wire messages of the telephony WebSocket (PROTOCOLS.md §1) and its close codes.

Pure data: building a message does no I/O.
"""

from __future__ import annotations

import enum
from typing import Literal, TypedDict


class PartialMessage(TypedDict):
    """Current text of the open segment; ``seq`` is the number the next final will get."""

    type: Literal["partial"]
    text: str
    seq: int


class FinalMessage(TypedDict):
    """A final segment, sent after it is stored."""

    type: Literal["final"]
    text: str
    seq: int


class ErrorMessage(TypedDict):
    """Why the server is about to close the stream."""

    type: Literal["error"]
    code: str
    message: str
    retryable: bool


ServerMessage = PartialMessage | FinalMessage | ErrorMessage


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


OVERLOAD_MESSAGE = "ASR inference is overloaded; retry later."
OVERLOAD_REASON = "inference overloaded"
SPOOL_FULL_MESSAGE = "results cannot be persisted fast enough (spool full); retry later."
SPOOL_FULL_REASON = "spool full"


def partial(text: str, seq: int) -> PartialMessage:
    """Build a partial message."""
    return {"type": "partial", "text": text, "seq": seq}


def final(text: str, seq: int) -> FinalMessage:
    """Build a final message."""
    return {"type": "final", "text": text, "seq": seq}


def error(code: str, message: str, *, retryable: bool) -> ErrorMessage:
    """Build an error message."""
    return {"type": "error", "code": code, "message": message, "retryable": retryable}


def overloaded() -> ErrorMessage:
    """The exact overload message older clients look for."""
    return error("inference_overloaded", OVERLOAD_MESSAGE, retryable=True)
