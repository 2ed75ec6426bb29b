"""``earshot transcripts show ID``: a stored transcript, telephony or Talk, with speakers and times.

A telephony session has one speaker and its segments' times are when they were stored; a Talk call
(session ``talk:<room>:<start>``) names each segment's speaker and when the speech began and ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from earshot.events import Segment, SessionId
from earshot.settings import Settings
from earshot.storage import backends


class UnknownTranscript(LookupError):
    """No session with this id is stored."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A stored session and its segments."""

    session_id: SessionId
    user_id: str | None
    created_at: datetime
    segments: list[Segment]


async def load(settings: Settings, session_id: SessionId) -> Transcript:
    """Read a session from the segment store the settings name.

    Raises:
        UnknownTranscript: it is not stored.
        StorageError: the store cannot be read.
    """
    store = await backends.open_segment_store(settings.resolved_segments_url())
    try:
        found = await store.session(session_id)
        if found is None:
            raise UnknownTranscript(f"no stored session {session_id!r}")
        return Transcript(session_id, found[0], found[1], await store.segments(session_id))
    finally:
        await store.aclose()


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S.%f")[:-3]


def line(segment: Segment) -> str:
    """One segment: its number, when it was spoken, who spoke, what was said."""
    start = segment.started_at or segment.created_at
    when = (
        _clock(start) if segment.ended_at is None else f"{_clock(start)}-{_clock(segment.ended_at)}"
    )
    who = f" {segment.speaker}:" if segment.speaker else ""
    return f"#{segment.seq} [{when}]{who} {segment.text}"


def render(transcript: Transcript) -> list[str]:
    """The lines ``earshot transcripts show`` prints."""
    speakers = sorted({s.speaker for s in transcript.segments if s.speaker})
    header = (
        f"session {transcript.session_id} (user {transcript.user_id or '-'}, started"
        f" {transcript.created_at:%Y-%m-%d %H:%M:%S} UTC): {len(transcript.segments)} segments"
    )
    if speakers:
        header += f", speakers {', '.join(speakers)}"
    return [header, *(line(segment) for segment in transcript.segments)]
