"""A room's live translation: each final, once per target language somebody chose, to those people.

:class:`RoomTranslations` keeps one bounded queue and one task per target language, so that the
finals of one language arrive in the order they were spoken while a slow language does not hold up
another. A final that finds its language's queue full is dropped and counted; a failed translation
is logged and counted, and the next final is tried again. The translated text goes, as a
``transcript`` message with ``final: true`` and the target ``langId``, to the sessions that chose
that language when it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from earshot import metrics
from earshot.gateways.talk import messages
from earshot.gateways.talk.taskprocessing import TranslationError, TranslationLanguages

log = logging.getLogger(__name__)

Send = Callable[[messages.ClientMessage], Awaitable[bool]]
SessionsOf = Callable[[str], list[str]]


class Translator(Protocol):
    """What translates finals (Nextcloud TaskProcessing in production)."""

    async def languages(self) -> TranslationLanguages:
        """The origin and target languages offered."""
        ...

    async def translate(self, text: str, *, origin: str, target: str, custom_id: str) -> str:
        """``text`` translated from ``origin`` into ``target``."""
        ...


@dataclass(frozen=True, slots=True)
class _Final:
    speaker: str
    text: str
    origin: str
    spoken_at: float


class RoomTranslations:
    """The translation workers of one room; :meth:`close` stops them."""

    def __init__(
        self,
        token: str,
        translator: Translator,
        *,
        send: Send,
        sessions_of: SessionsOf,
        queue_finals: int,
    ) -> None:
        self._token = token
        self._translator = translator
        self._send = send
        self._sessions_of = sessions_of
        self._queue_finals = queue_finals
        self._queues: dict[str, asyncio.Queue[_Final]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._numbers = itertools.count(1)

    def submit(self, speaker: str, text: str, *, origin: str, targets: set[str]) -> None:
        """Queue a final for translation into each of ``targets`` (without waiting)."""
        final = _Final(speaker, text, origin, time.perf_counter())
        for target in sorted(targets):
            try:
                self._queue(target).put_nowait(final)
            except asyncio.QueueFull:
                metrics.TALK_TRANSLATIONS.labels("dropped").inc()
                log.warning(
                    "room %s: %s translations are behind, a final dropped", self._token, target
                )

    async def close(self) -> None:
        """Stop translating (what is queued is not translated any more)."""
        workers = list(self._workers.values())
        self._workers.clear()
        self._queues.clear()
        for worker in workers:
            worker.cancel()
        for worker in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    def _queue(self, target: str) -> asyncio.Queue[_Final]:
        queue = self._queues.get(target)
        if queue is None:
            queue = self._queues[target] = asyncio.Queue(self._queue_finals)
            self._workers[target] = asyncio.create_task(
                self._work(target, queue), name=f"translate-{self._token}-{target}"
            )
        return queue

    async def _work(self, target: str, queue: asyncio.Queue[_Final]) -> None:
        while True:
            final = await queue.get()
            try:
                text = await self._translate(final, target)
            except TranslationError as exc:
                metrics.TALK_TRANSLATIONS.labels("failed").inc()
                log.error("room %s: no %s translation of a final: %s", self._token, target, exc)
                continue
            sent = False
            for session in self._sessions_of(target):
                message = messages.transcript(
                    session, text=text, final=True, lang=target, speaker=final.speaker
                )
                sent = await self._send(message) or sent
            if sent:
                metrics.TALK_TRANSLATIONS.labels("sent").inc()
                metrics.TALK_TRANSLATION_LATENCY.observe(time.perf_counter() - final.spoken_at)

    async def _translate(self, final: _Final, target: str) -> str:
        languages = await self._translator.languages()
        return await self._translator.translate(
            final.text,
            origin=languages.origin_for(final.origin),
            target=target,
            custom_id=f"lt-{self._token}-{final.origin}-{target}-{next(self._numbers)}",
        )
