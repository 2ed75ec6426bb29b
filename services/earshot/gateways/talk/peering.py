"""The WebRTC side of one speaker: answer Janus's offer receive-only, hand audio frames on.

Only audio is received: video m-lines are answered inactive, so no video is ever decoded or queued.
Janus trickles its candidates (its SDPs carry none); aiortc gathers ours before the answer is made,
so our answer carries them and there is nothing to trickle back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from earshot.gateways.talk.listening import PcmFrame

log = logging.getLogger(__name__)


class OfferRefused(ValueError):
    """An offer this gateway does not answer; ``code`` names it in the signaling error counter."""

    code: ClassVar[str]


class NoAudioOffered(OfferRefused):
    """An offer without an audio m-line: there is nothing to recognise."""

    code = "no_audio_offered"


class InvalidOffer(OfferRefused):
    """An offer aiortc cannot take (broken SDP)."""

    code = "invalid_offer"


#: The codes of every refusal: the gateway's counters exist at 0 for each from its start.
REFUSAL_CODES = tuple(refusal.code for refusal in (NoAudioOffered, InvalidOffer))


class SpeakerPeer:
    """One receive-only peer connection; owns the tasks that read its audio tracks."""

    def __init__(
        self, speaker: str, *, ice_servers: list[RTCIceServer], sink: Callable[[PcmFrame], None]
    ) -> None:
        self.speaker = speaker
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        self._sink = sink
        self._readers: set[asyncio.Task[None]] = set()
        self._pc.on("track", self._on_track)

    async def answer(self, offer_sdp: str) -> str:
        """Take an offer and return our answer's SDP.

        Raises:
            InvalidOffer: the SDP is not usable.
            NoAudioOffered: it offers no audio.
        """
        if "m=audio" not in offer_sdp:
            raise NoAudioOffered("the offer has no audio m-line")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise InvalidOffer(f"cannot take the offer: {exc}") from None
        for transceiver in self._pc.getTransceivers():
            transceiver.direction = "recvonly" if transceiver.kind == "audio" else "inactive"
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        return self._pc.localDescription.sdp

    async def add_candidate(self, payload: dict[str, Any]) -> None:
        """Add a candidate Janus trickled (an empty one marks the end and is ignored)."""
        raw = payload.get("candidate", {})
        line = str(raw.get("candidate", "")) if isinstance(raw, dict) else ""
        if not line:
            return
        try:
            candidate = candidate_from_sdp(line.removeprefix("candidate:"))
        except (ValueError, IndexError) as exc:
            log.warning("speaker %s: ignored a broken candidate %r: %s", self.speaker, line, exc)
            return
        candidate.sdpMid = raw.get("sdpMid")
        candidate.sdpMLineIndex = raw.get("sdpMLineIndex")
        await self._pc.addIceCandidate(candidate)

    async def close(self) -> None:
        """Close the connection and stop reading."""
        await self._pc.close()
        for task in list(self._readers):
            task.cancel()
        for task in list(self._readers):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        task = asyncio.create_task(self._read(track), name=f"talk-track-{self.speaker}")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            samples = frame.to_ndarray()
            if samples.dtype != np.int16 or frame.format.is_planar:
                log.warning(
                    "speaker %s: unexpected frame format %s", self.speaker, frame.format.name
                )
                continue
            pcm = np.asarray(samples, dtype=np.int16)
            self._sink(PcmFrame(pcm, frame.layout.nb_channels, frame.sample_rate))
