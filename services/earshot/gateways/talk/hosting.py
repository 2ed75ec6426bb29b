"""Every room a gateway process captions: start, route requests, admit by memory, close.

:class:`Rooms` owns the rooms and one watcher task per room that closes it when it finishes (grace
period over, call ended, signaling lost). A new room is admitted only when the estimated memory of
all rooms plus the new one stays under the limit (:class:`AdmissionRefused`, HTTP 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCIceServer

from earshot import metrics
from earshot.engines.recognizers import Recognizer
from earshot.gateways.talk import keeping, peering, signaling
from earshot.gateways.talk.backoff import Backoff
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.rooms import Room, RoomOptions, SameLanguage
from earshot.gateways.talk.taskprocessing import TranslationUnavailable
from earshot.gateways.talk.translating import Translator
from earshot.persistence.journaling import Journal
from earshot.storage.ports import StorageError

log = logging.getLogger(__name__)

IceServers = Callable[[], Awaitable[list[RTCIceServer]]]
#: Told a room's token and why it finished, once it is closed.
OnClosed = Callable[[str, str], None]


class AdmissionRefused(Exception):
    """A new room would pass the memory limit."""


class UnknownRoom(KeyError):
    """No room with this token is being captioned here."""


class UnsupportedLanguage(ValueError):
    """The engine does not offer this language."""


class UnsupportedTranslation(ValueError):
    """The translation provider does not offer this language pair, or it is no translation."""


async def _no_ice_servers() -> list[RTCIceServer]:
    return []


class Rooms:
    """The rooms of one process."""

    def __init__(
        self,
        settings: TalkSettings,
        recognizer: Recognizer,
        *,
        ice_servers: IceServers = _no_ice_servers,
        on_closed: OnClosed | None = None,
        translator: Translator | None = None,
        journal: Journal | None = None,
    ) -> None:
        self._settings = settings
        self.translator = translator
        self.journal = journal
        self._on_closed = on_closed
        self._recognizer = recognizer
        self._ice_servers = ice_servers
        self._rooms: dict[str, Room] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        metrics.initialise_talk(
            recognizer.name, signaling_codes=(*signaling.ERROR_CODES, *peering.REFUSAL_CODES)
        )

    def __contains__(self, token: object) -> bool:
        return token in self._rooms

    def check_language(self, lang: str | None) -> str:
        """The language to use: ``lang`` when supported, the default when None.

        Raises:
            UnsupportedLanguage: the engine does not offer it.
        """
        if lang is None:
            return self._settings.languages[0]
        if lang not in self._settings.languages:
            offered = ", ".join(self._settings.languages)
            raise UnsupportedLanguage(f"language {lang!r} is not offered; use one of: {offered}")
        return lang

    async def transcribe(
        self,
        token: str,
        nextcloud_session_id: str,
        *,
        enable: bool,
        lang: str | None,
        translate_to: str | None = None,
    ) -> None:
        """Turn captions on or off for a participant, joining the room first when needed; with
        ``translate_to`` the participant gets finals in that language instead.

        Raises:
            UnsupportedLanguage: ``lang`` is not offered.
            UnsupportedTranslation: ``translate_to`` cannot be had from ``lang``.
            TranslationUnavailable: there is no translation provider.
            taskprocessing.TranslationFailed: the provider's languages cannot be read.
            AdmissionRefused: a new room would pass the memory limit.
            signaling.SignalingUnavailable: the signaling server cannot be reached.
            signaling.SignalingRefused: it refused our credentials or the room.
        """
        chosen = self.check_language(lang)
        if enable and translate_to is not None:
            # Without langId the room keeps its language: translate from that one.
            existing = self._rooms.get(token)
            origin = existing.lang if existing is not None and lang is None else chosen
            await self.check_translation(origin, translate_to)
        async with self._lock:
            room = self._rooms.get(token)
            if room is None:
                if not enable:
                    return
                room = await self._open(token, chosen)
        if lang is not None:
            room.switch_language(chosen)
        room.enable(nextcloud_session_id, on=enable)
        if enable and translate_to is not None:
            room.translate(nextcloud_session_id, translate_to)

    async def translate(self, token: str, nextcloud_session_id: str, lang: str | None) -> None:
        """Send a participant finals in ``lang`` instead of captions (None: captions again).

        Raises:
            UnknownRoom: no such room here.
            rooms.NotATarget: the participant has not turned captions on.
            UnsupportedTranslation: the pair is not offered, or ``lang`` is the room's language.
            TranslationUnavailable: there is no translation provider.
            taskprocessing.TranslationFailed: the provider's languages cannot be read.
        """
        room = self._room(token)
        if lang is not None:
            await self.check_translation(room.lang, lang)
        try:
            room.translate(nextcloud_session_id, lang)
        except SameLanguage as exc:
            raise UnsupportedTranslation(str(exc)) from None

    async def check_translation(self, origin: str, target: str) -> None:
        """Refuse a language pair the provider does not offer.

        Raises:
            UnsupportedTranslation: the pair is not offered, or it is no translation.
            TranslationUnavailable: there is no translation provider.
            taskprocessing.TranslationFailed: the provider's languages cannot be read.
        """
        if self.translator is None:
            raise TranslationUnavailable("live translation is not available in this deployment")
        if origin == target:
            raise UnsupportedTranslation(f"the room is already captioned in {target!r}")
        offered = await self.translator.languages()
        if not offered.can_translate(origin, target):
            raise UnsupportedTranslation(
                f"the translation provider cannot translate {origin!r} into {target!r}"
            )

    def set_language(self, token: str, lang: str) -> None:
        """Switch a room's caption language.

        Raises:
            UnknownRoom: no such room here.
            UnsupportedLanguage: ``lang`` is not offered.
        """
        chosen = self.check_language(lang)
        self._room(token).switch_language(chosen)

    async def leave(self, token: str) -> None:
        """Leave a room now.

        Raises:
            UnknownRoom: no such room here.
        """
        room = self._room(token)
        room.finished.set()
        watcher = self._watchers.get(token)
        if watcher is not None:
            await watcher
        else:
            await room.close()

    def status(self) -> dict[str, Any]:
        """Rooms and the memory estimate."""
        return {
            "rooms": [room.status() for room in self._rooms.values()],
            "memory": {
                "estimatedMb": self.estimated_mb(),
                "limitMb": self._settings.memory_limit_mb,
            },
        }

    def estimated_mb(self, *, extra_rooms: int = 0) -> float:
        """Estimated memory of the rooms (plus prospective new ones), in MB.

        Each room counts at least ``expected_speakers``: a room just joined has no speakers yet
        but soon will, and admitting on its present size alone would overcommit.
        """
        s = self._settings
        per_room = [max(len(room.speakers), s.expected_speakers) for room in self._rooms.values()]
        per_room += [s.expected_speakers] * extra_rooms
        return len(per_room) * s.room_memory_mb + sum(per_room) * s.speaker_memory_mb

    async def aclose(self) -> None:
        """Leave every room."""
        for token in list(self._rooms):
            with contextlib.suppress(UnknownRoom):
                await self.leave(token)

    def room(self, token: str) -> Room | None:
        """The room being captioned with this token, if any."""
        return self._rooms.get(token)

    def _room(self, token: str) -> Room:
        try:
            return self._rooms[token]
        except KeyError:
            raise UnknownRoom(token) from None

    async def _open(self, token: str, lang: str) -> Room:
        s = self._settings
        prospective = self.estimated_mb(extra_rooms=1)
        if prospective > s.memory_limit_mb:
            metrics.TALK_ADMISSION_REJECTIONS.inc()
            raise AdmissionRefused(
                f"a new room would bring the estimated memory to {prospective:.0f} MB, "
                f"over the limit of {s.memory_limit_mb:.0f} MB"
            )
        options = RoomOptions(
            grace_seconds=s.grace_seconds,
            partial_interval_seconds=s.partial_interval_seconds,
            queue_frames=s.speaker_queue_frames,
            ice_servers=await self._ice_servers(),
            translation_queue_finals=s.translation_queue_finals,
        )
        room = Room(
            token,
            lang=lang,
            recognizer=self._recognizer,
            options=options,
            translator=self.translator,
        )
        client = signaling.SignalingClient(
            self._endpoint(token),
            room,
            backoff=Backoff(s.reconnect_initial_seconds, s.reconnect_max_seconds),
        )
        room.attach(client)
        await client.start()
        if self.journal is not None:
            await self._keep(room)
        self._rooms[token] = room
        self._watchers[token] = asyncio.create_task(self._watch(room), name=f"room-{token}")
        metrics.TALK_ROOMS.inc()
        return room

    async def _keep(self, room: Room) -> None:
        assert self.journal is not None
        try:
            room.keep(await keeping.CallTranscript.open(self.journal, room.token))
        except StorageError as exc:
            # Captions matter more than their record: caption the call, say what is not kept.
            log.error("room %s: this call's transcript is not kept: %s", room.token, exc)

    def _endpoint(self, token: str) -> signaling.Endpoint:
        s = self._settings
        context = None
        if s.signaling_url.startswith("wss") and s.skip_cert_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return signaling.Endpoint(
            url=s.signaling_url,
            secret=s.internal_secret.get_secret_value(),
            backend=s.backend_url,
            room_id=token,
            timeout=s.signaling_timeout_seconds,
            ssl_context=context,
        )

    async def _watch(self, room: Room) -> None:
        try:
            await room.finished.wait()
        finally:
            # Unlisted first, so a request arriving now opens a fresh room instead of a closing one.
            self._rooms.pop(room.token, None)
            self._watchers.pop(room.token, None)
            metrics.TALK_ROOMS.dec()
            await room.close()
            log.info("room %s closed: %s", room.token, room.finish_reason)
            if self._on_closed is not None:
                self._on_closed(room.token, room.finish_reason)
