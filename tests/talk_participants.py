"""A Talk participant for integration tests: a signaling client (hello 1.0 with backend auth) that
publishes audio to Janus with aiortc and records every message it receives, as Talk's web client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from typing import Any

import numpy as np
import numpy.typing as npt
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection

from tests.talk_media import PlayedTrack

Json = dict[str, Any]


class Participant:
    """One user in a Talk room: joined with a Nextcloud session id, publishing audio."""

    def __init__(self, url: str, backend_url: str, *, user: str, nextcloud_session_id: str) -> None:
        self.url = url
        self.backend_url = backend_url
        self.user = user
        self.nextcloud_session_id = nextcloud_session_id
        self.session_id = ""
        self.messages: list[Json] = []
        self._ids = itertools.count(1)
        self._connection: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[Json]] = {}
        self._answer: asyncio.Future[Json] | None = None
        self.pc: RTCPeerConnection | None = None
        # Janus trickles candidates right after its answer, before we have applied it.
        self._early_candidates: list[Json] = []
        self._answered = False

    async def connect(self, room: str) -> None:
        """Say hello (1.0, authenticated by the backend) and join the room."""
        self._connection = await websockets.connect(self.url)
        self._reader = asyncio.create_task(self._read(), name=f"participant-{self.user}")
        auth = {"url": self.backend_url, "params": {"userid": self.user, "ticket": "t"}}
        hello = await self._request({"type": "hello", "hello": {"version": "1.0", "auth": auth}})
        self.session_id = hello["hello"]["sessionid"]
        join = {"roomid": room, "sessionid": self.nextcloud_session_id}
        await self._request({"type": "room", "room": join})

    async def publish(self, samples: npt.NDArray[np.float32]) -> None:
        """Publish a 48 kHz mono signal (then silence) to the MCU, as Talk does: offer to ourselves."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(PlayedTrack(samples, layout="stereo"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._answer = asyncio.get_running_loop().create_future()
        sid = secrets.token_hex(8)
        offer = {"type": "offer", "sdp": self.pc.localDescription.sdp}
        data = {
            "to": self.session_id,
            "type": "offer",
            "roomType": "video",
            "sid": sid,
            "payload": offer,
        }
        await self.send_to(self.session_id, data)
        async with asyncio.timeout(20):
            answer = await self._answer
        await self.pc.setRemoteDescription(
            RTCSessionDescription(answer["payload"]["sdp"], "answer")
        )

    async def send_to(self, session_id: str, data: Json) -> None:
        recipient = {"type": "session", "sessionid": session_id}
        await self._send({"type": "message", "message": {"recipient": recipient, "data": data}})

    def transcripts(self) -> list[Json]:
        """The ``data`` of every transcript message received."""
        return [
            m["message"]["data"]
            for m in self.messages
            if m.get("type") == "message"
            and m["message"].get("data", {}).get("type") == "transcript"
        ]

    def transcript_senders(self) -> set[str]:
        return {
            m["message"]["sender"]["sessionid"]
            for m in self.messages
            if m.get("type") == "message"
            and m["message"].get("data", {}).get("type") == "transcript"
        }

    def saw_leave(self, session_id: str) -> bool:
        """Whether the room told this participant that ``session_id`` left."""
        return any(
            m.get("type") == "event"
            and m["event"].get("type") == "leave"
            and session_id in m["event"].get("leave", [])
            for m in self.messages
        )

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        if self._connection is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._send({"type": "bye", "bye": {}})
            await self._connection.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _request(self, message: Json) -> Json:
        message_id = str(next(self._ids))
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._replies[message_id] = future
        assert self._connection is not None
        await self._connection.send(json.dumps({**message, "id": message_id}))
        async with asyncio.timeout(15):
            reply = await future
        if reply["type"] == "error":
            raise RuntimeError(f"{self.user}: {message['type']} refused: {reply['error']}")
        return reply

    async def _send(self, message: Json) -> None:
        assert self._connection is not None
        await self._connection.send(json.dumps({**message, "id": str(next(self._ids))}))

    async def _read(self) -> None:
        assert self._connection is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._connection:
                message = json.loads(raw)
                self.messages.append(message)
                future = self._replies.pop(str(message.get("id", "")), None)
                if future is not None and not future.done():
                    future.set_result(message)
                    continue
                if message.get("type") == "message":
                    await self._signal(message["message"].get("data", {}))

    async def _signal(self, data: Json) -> None:
        if data.get("type") == "answer" and self._answer is not None and not self._answer.done():
            self._answer.set_result(data)
        elif data.get("type") == "candidate" and self.pc is not None:
            if not self._answered:
                self._early_candidates.append(data)
            else:
                await self._add_candidate(data)

    async def _add_candidate(self, data: Json) -> None:
        assert self.pc is not None
        raw = data.get("payload", {}).get("candidate", {})
        line = raw.get("candidate", "") if isinstance(raw, dict) else ""
        if line:
            candidate = candidate_from_sdp(line.removeprefix("candidate:"))
            candidate.sdpMid = raw.get("sdpMid")
            candidate.sdpMLineIndex = raw.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)
