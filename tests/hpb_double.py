"""A protocol-faithful double of Talk's signaling server (PROTOCOLS.md §3) for unit tests.

It speaks the HPB's JSON over a real WebSocket on a free loopback port: welcome, hello with internal
auth (checked like the server does: HMAC of the random, backend URL prefix, version), resume with
the resume id, ``no_such_session`` for expired sessions, internal ``incall``, room joins, session
messages relayed with their sender, ``client_not_found`` for unknown recipients, bye. Participants
are virtual sessions the test controls: what is sent to them lands in their inbox, and the test makes
them publish offers or leave. The test can drop a connection, expire a session, inject raw frames
and make the next message of a type fail with an error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Json = dict[str, Any]


@dataclass(eq=False)
class Session:
    """A client session (ours) or a virtual participant (the test's)."""

    session_id: str
    resume_id: str
    room: str = ""
    in_call: int = 0
    internal: bool = True
    nextcloud_session_id: str = ""
    connection: ServerConnection | None = None
    inbox: list[Json] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class SignalingDouble:
    """The signaling server double; use :func:`running_double`."""

    def __init__(self, *, secret: str, backend: str, versions: tuple[str, ...] = ("2.0", "1.0")):
        self.secret = secret
        self.backend = backend
        self.versions = versions
        self.rooms: set[str] = set()
        self.sessions: dict[str, Session] = {}
        self.received: list[Json] = []
        self.hellos = 0
        self.url = ""
        self._ids = itertools.count(1)
        self._failures: dict[str, list[str]] = {}
        self.changed = asyncio.Condition()

    # test controls

    def fail_next(self, message_type: str, code: str) -> None:
        """Answer the next client message of this type with an error."""
        self._failures.setdefault(message_type, []).append(code)

    def participant(self, room: str, name: str, *, in_call: int = 0) -> Session:
        """Add a virtual participant to a room (announced when its call state is set)."""
        session = Session(
            f"hpb-{name}",
            f"resume-{name}",
            room=room,
            in_call=in_call,
            internal=False,
            nextcloud_session_id=f"nc-{name}",
        )
        self.sessions[session.session_id] = session
        return session

    async def set_in_call(self, participant: Session, flags: int) -> None:
        """Change a participant's call state and send the room the participants update."""
        participant.in_call = flags
        await self._broadcast(participant.room, self._update(participant.room, [participant]))

    async def end_call(self, room: str) -> None:
        """The backend ends the call for everyone."""
        update = {"roomid": room, "incall": 0, "all": True}
        event = {"target": "participants", "type": "update", "update": update}
        await self._broadcast(room, {"type": "event", "event": event})

    async def leave(self, participant: Session) -> None:
        """A participant leaves the room."""
        room, participant.room = participant.room, ""
        event = {"target": "room", "type": "leave", "leave": [participant.session_id]}
        await self._broadcast(room, {"type": "event", "event": event})

    async def send_from(self, sender: Session, to: str, data: Json) -> None:
        """A participant sends a session message (an offer, a candidate) to ``to``."""
        await self._deliver(to, sender.session_id, {**data, "from": sender.session_id})

    async def inject(self, session_id: str, raw: str) -> None:
        """Send a raw frame to a client session."""
        connection = self.sessions[session_id].connection
        assert connection is not None
        await connection.send(raw)

    async def drop(self, session_id: str) -> None:
        """Cut a client's connection without a bye (the session stays resumable)."""
        connection = self.sessions[session_id].connection
        assert connection is not None
        await connection.close(code=1011)

    async def expire(self, session_id: str) -> None:
        """Forget a session and cut its connection: resuming it answers ``no_such_session``."""
        session = self.sessions.pop(session_id)
        if session.connection is not None:
            await session.connection.close(code=1011)

    def clients(self) -> list[Session]:
        """Connected internal sessions."""
        return [s for s in self.sessions.values() if s.internal and s.connection is not None]

    async def wait_for(self, predicate: Any, within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked on every change)."""
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(predicate)

    # server side

    async def handle(self, connection: ServerConnection) -> None:
        session: Session | None = None
        if "2.0" in self.versions:
            await connection.send(json.dumps({"type": "welcome", "welcome": {"features": []}}))
        try:
            async for raw in self._frames(connection):
                try:
                    message = json.loads(raw)
                except ValueError:
                    await self._error(connection, None, "invalid_request", "not JSON")
                    continue
                self.received.append(message)
                session = await self._on_message(connection, session, message)
                await self._notify()
        finally:
            if session is not None and session.connection is connection:
                session.connection = None
            await self._notify()

    async def _frames(self, connection: ServerConnection) -> AsyncIterator[str | bytes]:
        # A client that vanishes without a close frame (killed, dropped) simply ends its session.
        with contextlib.suppress(ConnectionClosed):
            async for raw in connection:
                yield raw

    async def _on_message(
        self, connection: ServerConnection, session: Session | None, message: Json
    ) -> Session | None:
        kind, message_id = message.get("type"), message.get("id")
        failures = self._failures.get(kind or "", [])
        if failures:
            await self._error(connection, message_id, failures.pop(0), "failing as asked")
            return session
        if kind == "hello":
            return await self._hello(connection, message_id, message["hello"])
        if session is None:
            await self._error(connection, message_id, "hello_expected", "say hello first")
            return None
        if kind == "internal":
            session.in_call = message["internal"]["incall"]["incall"]
        elif kind == "room":
            await self._join(connection, session, message_id, message["room"])
        elif kind == "message":
            to = message["message"]["recipient"]["sessionid"]
            if to not in self.sessions:
                await self._error(connection, message_id, "client_not_found", "no such client")
            else:
                await self._deliver(to, session.session_id, message["message"]["data"])
        elif kind == "bye":
            self.sessions.pop(session.session_id, None)
            with contextlib.suppress(ConnectionClosed):
                await connection.send(json.dumps({"type": "bye", "id": message_id, "bye": {}}))
            await connection.close()
            return None
        return session

    async def _hello(
        self, connection: ServerConnection, message_id: Any, hello: Json
    ) -> Session | None:
        version = hello.get("version")
        if version not in self.versions:
            await self._error(connection, message_id, "invalid_hello_version", "unsupported")
            return None
        if "resumeid" in hello:
            found = [s for s in self.sessions.values() if s.resume_id == hello["resumeid"]]
            if not found:
                await self._error(connection, message_id, "no_such_session", "expired")
                return None
            session = found[0]
        else:
            params = hello["auth"]["params"]
            expected = hmac.new(self.secret.encode(), params["random"].encode(), hashlib.sha256)
            if not params["backend"].startswith(self.backend):
                await self._error(connection, message_id, "invalid_backend", "unknown backend")
                return None
            if not hmac.compare_digest(expected.hexdigest(), params["token"]):
                await self._error(connection, message_id, "invalid_token", "bad token")
                return None
            self.hellos += 1
            n = next(self._ids)
            session = Session(f"bot-{n}", f"bot-resume-{n}")
            self.sessions[session.session_id] = session
        session.connection = connection
        reply = {
            "sessionid": session.session_id,
            "resumeid": session.resume_id,
            "userid": "",
            "version": version,
            "server": {"features": []},
        }
        await connection.send(json.dumps({"type": "hello", "id": message_id, "hello": reply}))
        return session

    async def _join(
        self, connection: ServerConnection, session: Session, message_id: Any, room: Json
    ) -> None:
        if room["roomid"] not in self.rooms:
            await self._error(connection, message_id, "no_such_room", "unknown room")
            return
        session.room = room["roomid"]
        reply = {
            "type": "room",
            "id": message_id,
            "room": {"roomid": session.room, "properties": {}},
        }
        await connection.send(json.dumps(reply))
        others = [s for s in self.sessions.values() if s.room == session.room]
        await connection.send(json.dumps(self._update(session.room, others)))

    def _update(self, room: str, sessions: list[Session]) -> Json:
        users = [
            {
                "sessionId": s.session_id,
                "nextcloudSessionId": s.nextcloud_session_id,
                "inCall": s.in_call,
                "internal": s.internal,
                "lastPing": 0,
                "userId": "",
                "displayName": s.session_id,
            }
            for s in sessions
        ]
        update = {"roomid": room, "users": users}
        return {
            "type": "event",
            "event": {"target": "participants", "type": "update", "update": update},
        }

    async def _broadcast(self, room: str, message: Json) -> None:
        for session in list(self.sessions.values()):
            if session.room == room and session.connection is not None:
                with contextlib.suppress(Exception):
                    await session.connection.send(json.dumps(message))

    async def _deliver(self, to: str, sender: str, data: Json) -> None:
        target = self.sessions[to]
        message = {
            "type": "message",
            "message": {"sender": {"type": "session", "sessionid": sender}, "data": data},
        }
        if target.connection is not None:
            await target.connection.send(json.dumps(message))
        else:
            target.inbox.append(data)
            target.arrived.set()
        await self._notify()

    async def _error(
        self, connection: ServerConnection, message_id: Any, code: str, text: str
    ) -> None:
        body: Json = {"type": "error", "error": {"code": code, "message": text}}
        if message_id is not None:
            body["id"] = message_id
        await connection.send(json.dumps(body))

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


async def eventually(predicate: Callable[[], bool], within: float, *, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running_double(
    *, secret: str, backend: str, versions: tuple[str, ...] = ("2.0", "1.0")
) -> AsyncIterator[SignalingDouble]:
    """Serve a double on a free loopback port; yields it with ``url`` set."""
    double = SignalingDouble(secret=secret, backend=backend, versions=versions)
    async with serve(double.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        double.url = f"ws://127.0.0.1:{port}/spreed"
        yield double
