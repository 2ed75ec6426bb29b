"""The HPB signaling client of one room: hello, in call, join, then events until it leaves.

A :class:`SignalingClient` owns one WebSocket and one reader task. :meth:`SignalingClient.start`
connects and joins (or raises :class:`SignalingUnavailable` / :class:`SignalingRefused`); afterwards
every server message goes to the room's :class:`SignalingEvents`. A dropped connection is resumed
with the resume id (a new hello when the server answers ``no_such_session``), with exponential
backoff; the room hears :meth:`SignalingEvents.signaling_session` after every (re)join, and
:meth:`SignalingEvents.signaling_lost` when the client gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection

from earshot import metrics
from earshot.gateways.talk import messages
from earshot.gateways.talk.backoff import Backoff

log = logging.getLogger(__name__)

VERSIONS = ("2.0", "1.0")
# Servers older than 1.x refuse "2.0" with this code; we then speak "1.0" with the same auth.
_VERSION_REFUSED = "invalid_hello_version"
_FATAL = frozenset({"invalid_token", "auth-failed", "no_such_room", "invalid_backend"})
_RETRY_JOIN = frozenset({"room_join_failed", "too_many_requests", "duplicate_session"})
#: The error codes this client handles by name, and its own ``malformed`` (a bad frame).
ERROR_CODES = ("malformed", "no_such_session", _VERSION_REFUSED, *sorted(_FATAL | _RETRY_JOIN))
_MAX_JOIN_ATTEMPTS = 5
_REMEMBERED_RECIPIENTS = 256

ReplyT = TypeVar("ReplyT")


class SignalingUnavailable(Exception):
    """The signaling server could not be reached or did not answer in time (retryable)."""


class SignalingRefused(Exception):
    """The signaling server refused us for good (bad secret, unknown backend or room)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class SignalingEvents(Protocol):
    """What a room hears from its signaling client."""

    async def signaling_event(self, message: messages.ServerMessage) -> None:
        """A server message after the join (participants, offers, candidates, errors...)."""
        ...

    async def signaling_session(self, *, resumed: bool) -> None:
        """Joined again after a drop; ``resumed`` false means a new session (streams are gone)."""
        ...

    async def signaling_lost(self, reason: str) -> None:
        """The client gave up: the room can no longer be served."""
        ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect."""

    url: str
    secret: str
    backend: str
    room_id: str
    timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None


class _Handshake:
    """The replies we wait for during hello and join; other messages are kept for later."""

    def __init__(self, connection: ClientConnection, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self.held: list[messages.ServerMessage] = []

    async def expect(self, kind: type[ReplyT]) -> ReplyT:
        async with asyncio.timeout(self.timeout):
            while True:
                message = _parse(await self.connection.recv())
                if isinstance(message, kind):
                    return message
                if isinstance(message, messages.ErrorReply):
                    raise _HandshakeError(message)
                if message is not None and not isinstance(message, messages.Welcome):
                    self.held.append(message)


class _HandshakeError(Exception):
    def __init__(self, reply: messages.ErrorReply) -> None:
        super().__init__(reply.code)
        self.reply = reply


def _parse(raw: str | bytes) -> messages.ServerMessage | None:
    try:
        return messages.parse(raw)
    except messages.MalformedMessage as exc:
        metrics.TALK_SIGNALING_ERRORS.labels("malformed").inc()
        log.warning("ignored a malformed signaling message: %s", exc)
        return None


class SignalingClient:
    """One internal session in one room."""

    def __init__(self, endpoint: Endpoint, events: SignalingEvents, *, backoff: Backoff) -> None:
        self.endpoint = endpoint
        self._events = events
        self._backoff = backoff
        self._ids = itertools.count(1)
        self._connection: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._recipients: OrderedDict[str, str] = OrderedDict()
        self.session_id = ""
        self.version = ""
        self._resume_id = ""
        self._closing = False

    async def start(self) -> None:
        """Connect, say hello, go in call and join the room; then read in the background.

        Raises:
            SignalingUnavailable: the server cannot be reached or did not answer.
            SignalingRefused: the server refused our credentials or the room.
        """
        held = await self._session(resume=False)
        self._reader = asyncio.create_task(self._read(held), name=f"hpb-{self.endpoint.room_id}")

    async def send(self, message: messages.ClientMessage) -> bool:
        """Send a message; False when the connection is down (the caller decides what is lost)."""
        connection = self._connection
        if connection is None:
            return False
        message_id = str(next(self._ids))
        recipient = message.get("message", {}).get("recipient", {}).get("sessionid")
        if recipient:
            self._remember(message_id, str(recipient))
        try:
            await connection.send(_dumps({**message, "id": message_id}))
        except websockets.ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        """Leave: say bye, close the connection and stop the reader."""
        self._closing = True
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(websockets.ConnectionClosed, OSError):
                await connection.send(_dumps({**messages.bye(), "id": str(next(self._ids))}))
            await connection.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._connection = None

    def _remember(self, message_id: str, recipient: str) -> None:
        self._recipients[message_id] = recipient
        while len(self._recipients) > _REMEMBERED_RECIPIENTS:
            self._recipients.popitem(last=False)

    async def _session(self, *, resume: bool) -> list[messages.ServerMessage]:
        """Open a connection and bring the session into the room; returns messages held meanwhile."""
        try:
            connection = await asyncio.wait_for(
                websockets.connect(self.endpoint.url, ssl=self.endpoint.ssl_context),
                self.endpoint.timeout,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise SignalingUnavailable(f"cannot reach {self.endpoint.url}: {exc!r}") from None
        try:
            held = await self._handshake(connection, resume=resume)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return held

    async def _handshake(
        self, connection: ClientConnection, *, resume: bool
    ) -> list[messages.ServerMessage]:
        handshake = _Handshake(connection, self.endpoint.timeout)
        try:
            if not (resume and await self._resumed(handshake)):
                await self._hello(handshake)
            await self._join(handshake)
        except TimeoutError:
            raise SignalingUnavailable("the signaling server did not answer in time") from None
        except websockets.ConnectionClosed as exc:
            raise SignalingUnavailable(f"the signaling server closed: {exc}") from None
        except _HandshakeError as exc:
            reply = exc.reply
            metrics.TALK_SIGNALING_ERRORS.labels(reply.code).inc()
            if reply.code in _FATAL:
                raise SignalingRefused(reply.code, reply.message) from None
            raise SignalingUnavailable(f"{reply.code}: {reply.message}") from None
        return handshake.held

    async def _resumed(self, handshake: _Handshake) -> bool:
        if not self._resume_id:
            return False
        await self._send_on(handshake.connection, messages.resume(self.version, self._resume_id))
        try:
            reply = await handshake.expect(messages.HelloReply)
        except _HandshakeError as exc:
            if exc.reply.code != "no_such_session":
                raise
            metrics.TALK_SIGNALING_ERRORS.labels("no_such_session").inc()
            log.info("room %s: session expired, starting a new one", self.endpoint.room_id)
            return False
        self._accept(reply)
        return True

    async def _hello(self, handshake: _Handshake) -> None:
        for version in VERSIONS:
            hello = messages.hello(
                version, secret=self.endpoint.secret, backend=self.endpoint.backend
            )
            await self._send_on(handshake.connection, hello)
            try:
                reply = await handshake.expect(messages.HelloReply)
            except _HandshakeError as exc:
                if exc.reply.code == _VERSION_REFUSED and version != VERSIONS[-1]:
                    log.info("signaling server refuses hello %s; trying the next", version)
                    continue
                raise
            self._accept(reply, version=reply.version or version)
            return

    def _accept(self, reply: messages.HelloReply, *, version: str | None = None) -> None:
        self.session_id = reply.session_id
        self._resume_id = reply.resume_id or self._resume_id
        if version is not None:
            self.version = version

    async def _join(self, handshake: _Handshake) -> None:
        await self._send_on(handshake.connection, messages.in_call(messages.IN_CALL))
        for attempt in range(1, _MAX_JOIN_ATTEMPTS + 1):
            join = messages.join(self.endpoint.room_id, self.session_id)
            await self._send_on(handshake.connection, join)
            try:
                await handshake.expect(messages.RoomJoined)
                self._backoff.reset()
                return
            except _HandshakeError as exc:
                if exc.reply.code not in _RETRY_JOIN or attempt == _MAX_JOIN_ATTEMPTS:
                    raise
                metrics.TALK_SIGNALING_ERRORS.labels(exc.reply.code).inc()
                await asyncio.sleep(self._backoff.next_delay())

    async def _send_on(self, connection: ClientConnection, message: messages.ClientMessage) -> None:
        await connection.send(_dumps({**message, "id": str(next(self._ids))}))

    async def _read(self, held: list[messages.ServerMessage]) -> None:
        for waiting in held:
            await self._deliver(waiting)
        while not self._closing:
            connection = self._connection
            assert connection is not None
            try:
                async for raw in connection:
                    parsed = _parse(raw)
                    if parsed is not None and not await self._handle(parsed):
                        break
            except websockets.ConnectionClosed:
                pass
            if self._closing:
                return
            if not await self._reconnect():
                return

    async def _handle(self, message: messages.ServerMessage) -> bool:
        """Deliver one message; False when the session is gone and must be replaced."""
        if isinstance(message, messages.Bye):
            self._resume_id = ""
            return False
        if isinstance(message, messages.ErrorReply):
            metrics.TALK_SIGNALING_ERRORS.labels(message.code).inc()
            if message.code == "no_such_session":
                self._resume_id = ""
                return False
            message = replace(message, recipient=self._recipients.get(message.reply_to, ""))
        await self._deliver(message)
        return True

    async def _deliver(self, message: messages.ServerMessage) -> None:
        try:
            await self._events.signaling_event(message)
        except Exception:
            # One bad event (a broken offer, a failing peer) must not end the room's signaling.
            log.exception("room %s: handling %r failed", self.endpoint.room_id, message)

    async def _reconnect(self) -> bool:
        """Come back after a drop, with backoff; False when the client gave up."""
        old = self._connection
        self._connection = None
        if old is not None:
            await old.close()
        metrics.TALK_RECONNECTS.inc()
        previous = self.session_id
        while not self._closing:
            await asyncio.sleep(self._backoff.next_delay())
            try:
                held = await self._session(resume=True)
            except SignalingUnavailable as exc:
                log.info("room %s: reconnect failed: %s", self.endpoint.room_id, exc)
                continue
            except SignalingRefused as exc:
                await self._events.signaling_lost(str(exc))
                return False
            self._backoff.reset()
            await self._events.signaling_session(resumed=self.session_id == previous)
            for waiting in held:
                await self._deliver(waiting)
            return True
        return False


def _dumps(message: object) -> str:
    return json.dumps(message, separators=(",", ":"))
