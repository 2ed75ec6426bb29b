"""HPB signaling wire formats (PROTOCOLS.md §3): pure builders and parsers, no I/O, no asyncio.

Client messages are built as plain dicts (TypedDicts) without their ``id``: the client numbers them.
Server messages are parsed into frozen dataclasses; anything malformed raises
:class:`MalformedMessage` with a precise reason, so one bad frame never takes a room down.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

ROOM_TYPE = "video"

IN_CALL = 1
WITH_AUDIO = 2
WITH_VIDEO = 4
WITH_PHONE = 8


class MalformedMessage(ValueError):
    """A signaling frame that is not valid JSON or lacks what its type requires."""


class ClientMessage(TypedDict):
    """A message to the signaling server (``id`` is added when it is sent)."""

    type: str
    id: NotRequired[str]
    hello: NotRequired[dict[str, Any]]
    internal: NotRequired[dict[str, Any]]
    room: NotRequired[dict[str, Any]]
    message: NotRequired[dict[str, Any]]
    bye: NotRequired[dict[str, Any]]


class TranscriptData(TypedDict):
    """The ``data`` of a caption sent to one participant's session."""

    type: str
    message: str
    final: bool
    langId: str
    speakerSessionId: str
    roomType: str


def internal_token(secret: str, random: str) -> str:
    """The internal auth token: lowercase hex HMAC-SHA256 of ``random`` keyed by the secret."""
    return hmac.new(secret.encode(), random.encode(), hashlib.sha256).hexdigest()


def hello(version: str, *, secret: str, backend: str, random: str | None = None) -> ClientMessage:
    """A hello with internal auth; ``random`` defaults to 32 fresh random bytes, hex-encoded."""
    nonce = random if random is not None else secrets.token_hex(32)
    params = {"random": nonce, "token": internal_token(secret, nonce), "backend": backend}
    auth = {"type": "internal", "params": params}
    return {"type": "hello", "hello": {"version": version, "auth": auth}}


def resume(version: str, resume_id: str) -> ClientMessage:
    """A hello that resumes a dropped session."""
    return {"type": "hello", "hello": {"version": version, "resumeid": resume_id}}


def in_call(flags: int) -> ClientMessage:
    """Tell the server our internal session is (``IN_CALL``) or is not (0) in the call."""
    return {"type": "internal", "internal": {"type": "incall", "incall": {"incall": flags}}}


def join(room_id: str, session_id: str) -> ClientMessage:
    """Join a room (an empty ``room_id`` leaves the current one)."""
    return {"type": "room", "room": {"roomid": room_id, "sessionid": session_id}}


def bye() -> ClientMessage:
    """End the session."""
    return {"type": "bye", "bye": {}}


def to_session(session_id: str, data: dict[str, Any]) -> ClientMessage:
    """A message to one session; ``roomType`` is added because 1.2.x servers with an MCU need it."""
    payload = {**data, "roomType": ROOM_TYPE}
    recipient = {"type": "session", "sessionid": session_id}
    return {"type": "message", "message": {"recipient": recipient, "data": payload}}


def request_offer(session_id: str) -> ClientMessage:
    """Ask for a speaker's published stream."""
    return to_session(session_id, {"type": "requestoffer"})


def answer(session_id: str, *, sid: str, sdp: str, nick: str) -> ClientMessage:
    """Answer a speaker's offer."""
    payload = {"type": "answer", "sdp": sdp, "nick": nick}
    return to_session(
        session_id, {"to": session_id, "type": "answer", "sid": sid, "payload": payload}
    )


def candidate(session_id: str, *, sid: str, candidate: dict[str, Any]) -> ClientMessage:
    """Send one of our ICE candidates for a speaker's connection."""
    data = {"to": session_id, "type": "candidate", "sid": sid, "payload": {"candidate": candidate}}
    return to_session(session_id, data)


def transcript(target: str, *, text: str, final: bool, lang: str, speaker: str) -> ClientMessage:
    """A caption for one participant's session."""
    data: TranscriptData = {
        "type": "transcript",
        "message": text,
        "final": final,
        "langId": lang,
        "speakerSessionId": speaker,
        "roomType": ROOM_TYPE,
    }
    return to_session(target, dict(data))


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's greeting before the hello (2.0 servers)."""

    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HelloReply:
    """Our session: its id, the resume id for a reconnect, the version spoken."""

    session_id: str
    resume_id: str
    user_id: str
    version: str
    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoomJoined:
    """The room join was accepted."""

    room_id: str


@dataclass(frozen=True, slots=True)
class Participant:
    """One user of a participants update."""

    session_id: str
    nextcloud_session_id: str
    in_call: int
    internal: bool
    user_id: str = ""

    @property
    def speaks(self) -> bool:
        """In the call with audio."""
        return bool(self.in_call & IN_CALL) and bool(self.in_call & WITH_AUDIO)


@dataclass(frozen=True, slots=True)
class ParticipantsUpdate:
    """Participants whose call state changed, or the call ending for everyone."""

    room_id: str
    users: tuple[Participant, ...]
    call_ended: bool = False


@dataclass(frozen=True, slots=True)
class RoomJoins:
    """Sessions that joined the room, each with its Nextcloud room session id when known."""

    sessions: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RoomLeft:
    """Sessions that left the room."""

    session_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Signal:
    """A session message (offer, answer, candidate, ...) sent to us."""

    sender: str
    kind: str
    sid: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error; ``recipient`` is set by the client when it answers a message to a session."""

    code: str
    message: str
    reply_to: str = ""
    recipient: str = ""


@dataclass(frozen=True, slots=True)
class Bye:
    """The server ended our session."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A message we have no use for (room joins, other events, control messages...)."""

    type: str


ServerMessage = (
    Welcome
    | HelloReply
    | RoomJoined
    | ParticipantsUpdate
    | RoomJoins
    | RoomLeft
    | Signal
    | ErrorReply
    | Bye
    | Ignored
)


def parse(raw: str | bytes) -> ServerMessage:
    """Parse one frame from the signaling server.

    Raises:
        MalformedMessage: not JSON, not an object, or missing what its type needs.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise MalformedMessage("a signaling message must be an object with a string 'type'")
    try:
        return _PARSERS.get(body["type"], _ignored)(body)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedMessage(f"bad {body['type']!r} message: {exc!r}") from None


def _ignored(body: dict[str, Any]) -> ServerMessage:
    return Ignored(body["type"])


def _welcome(body: dict[str, Any]) -> ServerMessage:
    return Welcome(tuple(body.get("welcome", {}).get("features", [])))


def _hello(body: dict[str, Any]) -> ServerMessage:
    reply = body["hello"]
    return HelloReply(
        session_id=str(reply["sessionid"]),
        resume_id=str(reply.get("resumeid", "")),
        user_id=str(reply.get("userid", "")),
        version=str(reply.get("version", "")),
        features=tuple(reply.get("server", {}).get("features", [])),
    )


def _room(body: dict[str, Any]) -> ServerMessage:
    return RoomJoined(str(body["room"]["roomid"]))


def _error(body: dict[str, Any]) -> ServerMessage:
    error = body["error"]
    return ErrorReply(str(error["code"]), str(error.get("message", "")), str(body.get("id", "")))


def _bye(body: dict[str, Any]) -> ServerMessage:
    return Bye()


def _event(body: dict[str, Any]) -> ServerMessage:
    event = body["event"]
    target, kind = event.get("target"), event.get("type")
    if target == "participants" and kind == "update":
        return _participants(event["update"])
    if target == "room" and kind == "join":
        # 1.2.x names the Nextcloud session only here ("roomsessionid"), not in participants updates.
        entries = event["join"]
        return RoomJoins(
            tuple((str(e["sessionid"]), str(e.get("roomsessionid", ""))) for e in entries)
        )
    if target == "room" and kind == "leave":
        return RoomLeft(tuple(str(s) for s in event["leave"]))
    return Ignored(f"event:{target}:{kind}")


def _participants(update: dict[str, Any]) -> ServerMessage:
    room_id = str(update.get("roomid", ""))
    if update.get("all") and not update.get("incall"):
        return ParticipantsUpdate(room_id, (), call_ended=True)
    users = tuple(
        Participant(
            session_id=str(user["sessionId"]),
            nextcloud_session_id=str(user.get("nextcloudSessionId", "")),
            in_call=int(user.get("inCall", 0)),
            internal=bool(user.get("internal", False)),
            user_id=str(user.get("userId", "")),
        )
        for user in update.get("users", [])
    )
    return ParticipantsUpdate(room_id, users)


def _message(body: dict[str, Any]) -> ServerMessage:
    message = body["message"]
    data = message["data"]
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return Ignored("message")
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        raise ValueError("payload must be an object")
    # Through an MCU the publisher is named in "from"; peer to peer only the sender is known.
    sender = str(data.get("from") or message["sender"]["sessionid"])
    return Signal(sender=sender, kind=data["type"], sid=str(data.get("sid", "")), payload=payload)


_PARSERS = {
    "welcome": _welcome,
    "hello": _hello,
    "room": _room,
    "error": _error,
    "bye": _bye,
    "event": _event,
    "message": _message,
}
