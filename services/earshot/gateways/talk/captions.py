"""Who gets which caption, and how often: pure caption routing and partial throttling.

Captions go to each session that asked for them, never to the whole room (the system earshot
replaces broadcast them). Talk names a caption target by its Nextcloud session id; the HPB addresses
sessions by their HPB session id: :class:`Targets` resolves one to the other through the
participants the HPB reported, and keeps targets it cannot resolve yet (their update is late).
A target that chose a translation language gets that language's finals instead of the captions in
the room's language.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from earshot.events import Recognition
from earshot.gateways.talk import messages


@dataclass(slots=True)
class Targets:
    """The caption targets of one room and the participants' session ids."""

    wanted: set[str] = field(default_factory=set)
    hpb_by_nextcloud: dict[str, str] = field(default_factory=dict)
    translating: dict[str, str] = field(default_factory=dict)

    def enable(self, nextcloud_session_id: str, *, on: bool) -> None:
        """Turn captions on or off for one Nextcloud session (off also ends its translation)."""
        if on:
            self.wanted.add(nextcloud_session_id)
        else:
            self.wanted.discard(nextcloud_session_id)
            self.translating.pop(nextcloud_session_id, None)

    def translate(self, nextcloud_session_id: str, lang: str | None) -> None:
        """Send this target finals in ``lang`` instead of the room's captions (None: stop)."""
        if lang is None:
            self.translating.pop(nextcloud_session_id, None)
        else:
            self.translating[nextcloud_session_id] = lang

    def learn(self, hpb_session_id: str, nextcloud_session_id: str) -> None:
        """Remember which HPB session a Nextcloud session is (ignored when either is unknown)."""
        if hpb_session_id and nextcloud_session_id:
            self.hpb_by_nextcloud[nextcloud_session_id] = hpb_session_id

    def forget(self, hpb_session_id: str) -> None:
        """A session left the room: it gets no more captions (and needs a new request)."""
        for nextcloud, hpb in list(self.hpb_by_nextcloud.items()):
            if hpb == hpb_session_id:
                del self.hpb_by_nextcloud[nextcloud]
                self.wanted.discard(nextcloud)
                self.translating.pop(nextcloud, None)

    def untranslate(self, lang: str) -> None:
        """Those who chose ``lang`` get captions instead (the room is captioned in it now)."""
        for nextcloud, chosen in list(self.translating.items()):
            if chosen == lang:
                del self.translating[nextcloud]

    def sessions(self) -> list[str]:
        """The HPB session ids to send captions in the room's language to now, in a stable order."""
        return self._resolved(n for n in self.wanted if n not in self.translating)

    def languages(self) -> set[str]:
        """The translation languages some target wants now."""
        return {lang for n, lang in self.translating.items() if n in self.wanted}

    def translation_sessions(self, lang: str) -> list[str]:
        """The HPB session ids to send finals translated into ``lang`` to now."""
        return self._resolved(n for n, chosen in self.translating.items() if chosen == lang)

    def _resolved(self, nextcloud_ids: Iterable[str]) -> list[str]:
        return sorted(self.hpb_by_nextcloud[n] for n in nextcloud_ids if n in self.hpb_by_nextcloud)

    def __bool__(self) -> bool:
        return bool(self.wanted)


@dataclass(slots=True)
class PartialThrottle:
    """Lets a speaker's partial through at most every ``interval`` seconds; finals always pass."""

    interval: float
    _last_sent: float | None = None
    _last_text: str = ""

    def admit(self, recognition: Recognition, now: float) -> bool:
        """Whether to send this recognition now."""
        if recognition.is_final:
            self._last_sent = None
            self._last_text = ""
            return True
        if recognition.text == self._last_text:
            return False
        if self._last_sent is not None and now - self._last_sent < self.interval:
            return False
        self._last_sent = now
        self._last_text = recognition.text
        return True


def route(
    recognition: Recognition, *, speaker: str, targets: list[str], lang: str
) -> list[messages.ClientMessage]:
    """One ``transcript`` message per target session for a speaker's recognition."""
    if not recognition.text:
        return []
    return [
        messages.transcript(
            target, text=recognition.text, final=recognition.is_final, lang=lang, speaker=speaker
        )
        for target in targets
    ]
