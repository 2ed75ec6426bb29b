"""One Talk room being captioned: its signaling session, its speakers and its caption targets.

A :class:`Room` follows the participants the HPB reports: each session in the call with audio (other
than internal ones: ours and other bots) becomes a speaker whose stream we request, answer and
recognise; captions go to the sessions that asked for them, and finals, translated, to those that
chose a translation language (:mod:`earshot.gateways.talk.translating`). The room finishes
(``finished`` is set) when nobody has wanted captions for the grace period, when the call ends for
everyone or when the signaling server is lost; its owner then closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCIceServer

from earshot import metrics
from earshot.engines.recognizers import Recognizer
from earshot.events import Recognition
from earshot.gateways.talk import captions, keeping, messages
from earshot.gateways.talk.listening import Heard, SpeakerAudio
from earshot.gateways.talk.peering import OfferRefused, SpeakerPeer
from earshot.gateways.talk.signaling import SignalingClient
from earshot.gateways.talk.translating import RoomTranslations, Translator

log = logging.getLogger(__name__)

NICK = "earshot"


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """What a room needs to know besides its token."""

    grace_seconds: float
    partial_interval_seconds: float
    queue_frames: int
    ice_servers: list[RTCIceServer] = field(default_factory=list)
    translation_queue_finals: int = 32


class NotATarget(LookupError):
    """A participant asked for a translation without having turned captions on."""


class SameLanguage(ValueError):
    """A translation into the language the room is captioned in."""


@dataclass(eq=False, slots=True)
class _Speaker:
    audio: SpeakerAudio
    throttle: captions.PartialThrottle
    peer: SpeakerPeer | None = None
    sid: str = ""
    captioned: bool = False  # the segment being recognised has had a caption sent


class Room:
    """Captions one Talk call. Create, :meth:`attach` a signaling client, then start it."""

    def __init__(
        self,
        token: str,
        *,
        lang: str,
        recognizer: Recognizer,
        options: RoomOptions,
        translator: Translator | None = None,
    ) -> None:
        self.token = token
        self.lang = lang
        self._recognizer = recognizer
        self._options = options
        self.targets = captions.Targets()
        self._speakers: dict[str, _Speaker] = {}
        self._signaling: SignalingClient | None = None
        self._grace: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()
        self.finish_reason = ""
        self._transcript: keeping.CallTranscript | None = None
        self._names: dict[str, str] = {}  # HPB session id -> who speaks (user id, else session)
        self._translations = (
            None
            if translator is None
            else RoomTranslations(
                token,
                translator,
                send=self._send,
                sessions_of=self.targets.translation_sessions,
                queue_finals=options.translation_queue_finals,
            )
        )

    def attach(self, signaling: SignalingClient) -> None:
        """Use this signaling client (its events come to this room)."""
        self._signaling = signaling

    def keep(self, transcript: keeping.CallTranscript) -> None:
        """Keep this call's finals in ``transcript`` (closed with the room)."""
        self._transcript = transcript

    @property
    def transcript_id(self) -> str:
        """The session id this call's transcript is kept under ("" when it is not kept)."""
        return "" if self._transcript is None else self._transcript.session_id

    @property
    def speakers(self) -> list[str]:
        """HPB session ids of the speakers being recognised."""
        return sorted(self._speakers)

    def enable(self, nextcloud_session_id: str, *, on: bool) -> None:
        """Turn captions on or off for a participant; the last one off starts the grace period."""
        self.targets.enable(nextcloud_session_id, on=on)
        self._watch_targets()

    def switch_language(self, lang: str) -> None:
        """Caption in ``lang`` from now on; who had chosen it as translation gets captions again."""
        self.lang = lang
        self.targets.untranslate(lang)

    def translate(self, nextcloud_session_id: str, lang: str | None) -> None:
        """Send a participant finals translated into ``lang`` instead of captions (None: stop).

        Raises:
            NotATarget: the participant has not turned captions on.
            SameLanguage: ``lang`` is the room's language.
        """
        if nextcloud_session_id not in self.targets.wanted:
            raise NotATarget(
                f"session {nextcloud_session_id!r} has not enabled transcription in room"
                f" {self.token!r}"
            )
        if lang == self.lang:
            raise SameLanguage(f"the room is already captioned in {lang!r}")
        self.targets.translate(nextcloud_session_id, lang)

    async def close(self) -> None:
        """Finish every speaker (their last finals are still sent), then leave the call."""
        self._finish("closed")
        if self._grace is not None:
            self._grace.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._grace
        for session_id in list(self._speakers):
            await self._drop_speaker(session_id)
        if self._translations is not None:
            await self._translations.close()
        if self._transcript is not None:
            await self._transcript.close()
        if self._signaling is not None:
            await self._signaling.close()

    def status(self) -> dict[str, Any]:
        """What the status endpoint shows about this room."""
        return {
            "roomToken": self.token,
            "langId": self.lang,
            "speakers": len(self._speakers),
            "targets": len(self.targets.wanted),
            "reachableTargets": len(self.targets.sessions()),
            "framesReceived": sum(s.audio.frames for s in self._speakers.values()),
            "framesDropped": sum(s.audio.dropped for s in self._speakers.values()),
            "sessionId": self._signaling.session_id if self._signaling else "",
            "transcriptId": self.transcript_id,
        }

    # SignalingEvents

    async def signaling_event(self, message: messages.ServerMessage) -> None:
        """Follow participants, answer offers, add candidates, note errors."""
        match message:
            case messages.ParticipantsUpdate(call_ended=True):
                self._finish("the call ended")
            case messages.ParticipantsUpdate(users=users):
                await self._participants(users)
            case messages.RoomJoins(sessions=joined):
                for session_id, nextcloud_session_id in joined:
                    self.targets.learn(session_id, nextcloud_session_id)
            case messages.RoomLeft(session_ids=left):
                for session_id in left:
                    await self._gone(session_id)
            case messages.Signal(kind="offer"):
                await self._offer(message)
            case messages.Signal(kind="candidate"):
                speaker = self._speakers.get(message.sender)
                if speaker is not None and speaker.peer is not None:
                    await speaker.peer.add_candidate(message.payload)
            case messages.ErrorReply(code="client_not_found", recipient=recipient) if recipient:
                await self._gone(recipient)
            case messages.ErrorReply():
                log.warning(
                    "room %s: signaling error %s: %s", self.token, message.code, message.message
                )

    async def signaling_session(self, *, resumed: bool) -> None:
        """After a new session every stream is gone: ask each speaker again."""
        if resumed:
            return
        for session_id in list(self._speakers):
            speaker = self._speakers[session_id]
            if speaker.peer is not None:
                await speaker.peer.close()
                speaker.peer = None
            await self._send(messages.request_offer(session_id))

    async def signaling_lost(self, reason: str) -> None:
        """The signaling server gave up on us."""
        self._finish(f"signaling lost: {reason}")

    # internals

    async def _participants(self, users: tuple[messages.Participant, ...]) -> None:
        for user in users:
            if user.internal:
                continue
            self._names[user.session_id] = user.user_id or user.session_id
            self.targets.learn(user.session_id, user.nextcloud_session_id)
            if user.speaks and user.session_id not in self._speakers:
                self._add_speaker(user.session_id)
                await self._send(messages.request_offer(user.session_id))
            elif not user.speaks and user.session_id in self._speakers:
                await self._drop_speaker(user.session_id)

    def _add_speaker(self, session_id: str) -> None:
        audio = SpeakerAudio(
            session_id,
            self._recognizer,
            queue_frames=self._options.queue_frames,
            on_recognition=self._caption,
        )
        audio.start()
        throttle = captions.PartialThrottle(self._options.partial_interval_seconds)
        self._speakers[session_id] = _Speaker(audio, throttle)
        metrics.TALK_SPEAKERS.inc()

    async def _drop_speaker(self, session_id: str) -> None:
        speaker = self._speakers.get(session_id)
        if speaker is None:
            return
        if speaker.peer is not None:
            await speaker.peer.close()
        # Still listed while finishing, so that its last final is routed like the others.
        await speaker.audio.close()
        del self._speakers[session_id]
        metrics.TALK_SPEAKERS.dec()

    async def _gone(self, session_id: str) -> None:
        await self._drop_speaker(session_id)
        self.targets.forget(session_id)
        self._watch_targets()

    async def _offer(self, signal: messages.Signal) -> None:
        speaker = self._speakers.get(signal.sender)
        if speaker is None:
            log.info("room %s: offer from %s, who is not a speaker", self.token, signal.sender)
            return
        if speaker.peer is not None:
            await speaker.peer.close()
        peer = SpeakerPeer(
            signal.sender, ice_servers=self._options.ice_servers, sink=speaker.audio.offer
        )
        try:
            sdp = await peer.answer(str(signal.payload.get("sdp", "")))
        except OfferRefused as exc:
            await peer.close()
            speaker.peer = None
            metrics.TALK_SIGNALING_ERRORS.labels(exc.code).inc()
            log.warning("room %s: refused the offer of %s: %s", self.token, signal.sender, exc)
            return
        speaker.peer, speaker.sid = peer, signal.sid
        await self._send(messages.answer(signal.sender, sid=signal.sid, sdp=sdp, nick=NICK))

    async def _caption(self, speaker_id: str, recognition: Recognition, heard: Heard) -> None:
        speaker = self._speakers.get(speaker_id)
        if speaker is not None and not speaker.throttle.admit(recognition, time.monotonic()):
            return
        kind = "final" if recognition.is_final else "partial"
        sent = False
        for message in captions.route(
            recognition, speaker=speaker_id, targets=self.targets.sessions(), lang=self.lang
        ):
            if await self._send(message):
                sent = True
                metrics.TALK_CAPTIONS_SENT.labels(kind).inc()
        if recognition.is_final and self._transcript is not None:
            self._transcript.add(
                speaker=self._names.get(speaker_id, speaker_id),
                text=recognition.text,
                started_at=keeping.wall_clock(heard.segment_started),
                ended_at=keeping.wall_clock(heard.chunk_arrived),
            )
        wanted = self.targets.languages()
        if recognition.is_final and wanted and self._translations is not None:
            self._translations.submit(
                speaker_id, recognition.text, origin=self.lang, targets=wanted
            )
        if sent and speaker is not None:
            self._observe_latency(speaker, recognition, heard)

    def _observe_latency(self, speaker: _Speaker, recognition: Recognition, heard: Heard) -> None:
        engine = self._recognizer.name
        now = time.perf_counter()
        if not speaker.captioned:
            metrics.TALK_FIRST_CAPTION_LATENCY.labels(engine).observe(now - heard.segment_started)
        speaker.captioned = not recognition.is_final
        if recognition.is_final:
            metrics.TALK_FINAL_CAPTION_LATENCY.labels(engine).observe(now - heard.chunk_arrived)

    async def _send(self, message: messages.ClientMessage) -> bool:
        return self._signaling is not None and await self._signaling.send(message)

    def _watch_targets(self) -> None:
        if self.targets and self._grace is not None:
            self._grace.cancel()
            self._grace = None
        elif not self.targets and self._grace is None and not self.finished.is_set():
            self._grace = asyncio.create_task(self._leave_after_grace(), name=f"grace-{self.token}")

    async def _leave_after_grace(self) -> None:
        await asyncio.sleep(self._options.grace_seconds)
        self._grace = None
        self._finish("nobody wants captions")

    def _finish(self, reason: str) -> None:
        if not self.finished.is_set():
            self.finish_reason = reason
            log.info("room %s: finishing: %s", self.token, reason)
            self.finished.set()
