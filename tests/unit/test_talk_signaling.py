"""The HPB signaling client against the protocol-faithful double: hello, join, resume, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from earshot.gateways.talk import messages
from earshot.gateways.talk.backoff import Backoff
from earshot.gateways.talk.signaling import (
    Endpoint,
    SignalingClient,
    SignalingRefused,
    SignalingUnavailable,
)
from tests.hpb_double import SignalingDouble, running_double
from tests.servers import free_port

SECRET = "internal-secret"
BACKEND = "http://127.0.0.1:9/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
ROOM = "room1"


@dataclass
class Recorder:
    """The room side of the client: records what it hears."""

    events: list[messages.ServerMessage] = field(default_factory=list)
    sessions: list[bool] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def signaling_event(self, message: messages.ServerMessage) -> None:
        self.events.append(message)
        self.changed.set()

    async def signaling_session(self, *, resumed: bool) -> None:
        self.sessions.append(resumed)
        self.changed.set()

    async def signaling_lost(self, reason: str) -> None:
        self.lost.append(reason)
        self.changed.set()

    async def until(self, predicate: object, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


@pytest_asyncio.fixture
async def double() -> AsyncIterator[SignalingDouble]:
    async with running_double(secret=SECRET, backend="http://127.0.0.1:9") as server:
        server.rooms.add(ROOM)
        yield server


def client_for(
    url: str, recorder: Recorder, *, secret: str = SECRET, room: str = ROOM
) -> SignalingClient:
    endpoint = Endpoint(url=url, secret=secret, backend=BACKEND, room_id=room, timeout=5.0)
    return SignalingClient(endpoint, recorder, backoff=Backoff(0.01, 0.05))


async def started(client: SignalingClient) -> SignalingClient:
    await client.start()
    return client


async def test_hello_authenticates_with_the_hmac_of_its_random_then_goes_in_call_and_joins(
    double: SignalingDouble,
) -> None:
    client = await started(client_for(double.url, Recorder()))
    try:
        types = [m["type"] for m in double.received]
        assert types == ["hello", "internal", "room"]
        hello = double.received[0]["hello"]
        assert hello["version"] == "2.0"
        params = hello["auth"]["params"]
        assert params["token"] == messages.internal_token(SECRET, params["random"])
        assert len(params["random"]) >= 64
        assert double.received[1]["internal"] == {"type": "incall", "incall": {"incall": 1}}
        assert double.received[2]["room"] == {"roomid": ROOM, "sessionid": client.session_id}
        ids = [int(m["id"]) for m in double.received]
        assert ids == sorted(ids)
        assert all(isinstance(m["id"], str) for m in double.received)
    finally:
        await client.close()


async def test_a_server_that_refuses_hello_2_0_is_greeted_with_1_0() -> None:
    async with running_double(
        secret=SECRET, backend="http://127.0.0.1:9", versions=("1.0",)
    ) as old:
        old.rooms.add(ROOM)
        client = await started(client_for(old.url, Recorder()))
        try:
            assert client.version == "1.0"
            assert [m["hello"]["version"] for m in old.received if m["type"] == "hello"] == [
                "2.0",
                "1.0",
            ]
        finally:
            await client.close()


async def test_a_wrong_internal_secret_is_refused_for_good(double: SignalingDouble) -> None:
    with pytest.raises(SignalingRefused) as refused:
        await client_for(double.url, Recorder(), secret="wrong").start()
    assert refused.value.code == "invalid_token"


async def test_an_unknown_room_is_refused(double: SignalingDouble) -> None:
    with pytest.raises(SignalingRefused) as refused:
        await client_for(double.url, Recorder(), room="nope").start()
    assert refused.value.code == "no_such_room"


async def test_an_unreachable_server_is_unavailable() -> None:
    with pytest.raises(SignalingUnavailable, match="cannot reach"):
        await client_for(f"ws://127.0.0.1:{free_port()}/spreed", Recorder()).start()


async def test_room_join_failed_is_retried(double: SignalingDouble) -> None:
    double.fail_next("room", "room_join_failed")
    double.fail_next("room", "too_many_requests")
    client = await started(client_for(double.url, Recorder()))
    try:
        assert [m["type"] for m in double.received].count("room") == 3
        assert double.sessions[client.session_id].room == ROOM
    finally:
        await client.close()


async def test_a_dropped_connection_resumes_the_same_session_and_joins_again(
    double: SignalingDouble,
) -> None:
    recorder = Recorder()
    client = await started(client_for(double.url, recorder))
    try:
        first = client.session_id
        await double.drop(first)
        await recorder.until(lambda: recorder.sessions)
        assert recorder.sessions == [True]
        assert client.session_id == first
        assert double.hellos == 1
        hellos = [m["hello"] for m in double.received if m["type"] == "hello"]
        assert hellos[-1] == {"version": "2.0", "resumeid": f"bot-resume-{first.split('-')[1]}"}
        assert [m["type"] for m in double.received][-2:] == ["internal", "room"]
    finally:
        await client.close()


async def test_an_expired_session_gets_a_full_new_hello(double: SignalingDouble) -> None:
    recorder = Recorder()
    client = await started(client_for(double.url, recorder))
    try:
        first = client.session_id
        await double.expire(first)
        await recorder.until(lambda: recorder.sessions)
        assert recorder.sessions == [False]
        assert client.session_id != first
        assert double.hellos == 2
    finally:
        await client.close()


async def test_malformed_frames_are_ignored_and_later_ones_still_arrive(
    double: SignalingDouble,
) -> None:
    recorder = Recorder()
    client = await started(client_for(double.url, recorder))
    try:
        await recorder.until(lambda: recorder.events)  # the participants of the join
        recorder.events.clear()
        await double.inject(client.session_id, "this is not json")
        await double.inject(
            client.session_id,
            json.dumps(
                {
                    "type": "event",
                    "event": {
                        "target": "participants",
                        "type": "update",
                        "update": {"users": [{"inCall": 3}]},
                    },
                }
            ),
        )
        await double.inject(client.session_id, '["not", "an", "object"]')
        await double.end_call(ROOM)
        await recorder.until(lambda: recorder.events)
        assert recorder.events == [messages.ParticipantsUpdate(ROOM, (), call_ended=True)]
    finally:
        await client.close()


async def test_an_error_about_a_session_message_names_its_recipient(
    double: SignalingDouble,
) -> None:
    recorder = Recorder()
    client = await started(client_for(double.url, recorder))
    try:
        assert await client.send(messages.request_offer("gone-session"))
        await recorder.until(
            lambda: any(isinstance(e, messages.ErrorReply) for e in recorder.events)
        )
        error = next(e for e in recorder.events if isinstance(e, messages.ErrorReply))
        assert (error.code, error.recipient) == ("client_not_found", "gone-session")
    finally:
        await client.close()


async def test_close_says_bye_and_the_session_ends(double: SignalingDouble) -> None:
    client = await started(client_for(double.url, Recorder()))
    session = client.session_id
    await client.close()
    await double.wait_for(lambda: session not in double.sessions)
    assert double.received[-1]["type"] == "bye"
    assert not await client.send(messages.bye())


async def test_a_server_bye_starts_a_new_session(double: SignalingDouble) -> None:
    recorder = Recorder()
    client = await started(client_for(double.url, recorder))
    try:
        await double.inject(client.session_id, '{"type": "bye", "bye": {}}')
        await recorder.until(lambda: recorder.sessions)
        assert recorder.sessions == [False]
        assert double.hellos == 2
    finally:
        await client.close()


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(0.75 * c <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.reset()
    assert backoff.next_delay() <= 1.0
