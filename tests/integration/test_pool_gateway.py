"""A pool gateway over a real uvicorn server and real WebSocket clients: many sessions, each with
its own token and settings, admitted from registrations the operator's code builds; a session
that loses its registration has its live stream ended (its finals told and stored).

The registrations are put into the registry here as the follower would (the follower against a
real API server is tested in tests/e2e/test_pools.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.audio.codecs import Codec
from earshot.cli import demoing
from earshot.events import SessionId
from earshot.gateways.g711 import client, registrations, serving
from earshot.gateways.g711.app import Services
from earshot.gateways.g711.registrations import Registry
from earshot.settings import Settings
from earshot_operator import pools, specs
from earshot_operator.settings import Pool
from tests.gateway import session_url, until_closed
from tests.integration.test_g711_gateway import FRAME_SECONDS, speech_frames

POOL = Pool(name="default", address="unused:0")


@dataclass
class RunningPool:
    """A pool gateway serving on loopback, its registry and its server."""

    base: str
    registry: Registry
    server: serving.GatewayServer
    settings: Settings

    def register(self, name: str, *, token: str | None = "t0ken", **spec: Any) -> str:
        """Register a session as the operator would; the resource key."""
        body: dict[str, Any] = {
            "kind": "TranscriptionSession",
            "metadata": {"name": name, "namespace": "tel", "uid": "u"},
            "spec": spec,
        }
        parsed = specs.parse_session(body)
        body["status"] = {"registration": pools.build_registration(POOL, parsed, token=token)}
        registration = registrations.parse(body, pool="default", base=self.settings)
        assert registration is not None
        self.registry.put(registration.resource, registration)
        return registration.resource

    def unregister(self, resource: str, why: str) -> None:
        """Drop a registration and end its stream, as the follower does."""
        ended = self.registry.put(resource, None)
        assert ended is not None
        self.server.sessions.end(ended, why)


@asynccontextmanager
async def running_pool(settings: Settings, services: Services) -> AsyncIterator[RunningPool]:
    pool_settings = settings.model_copy(
        update={"pool": "default", "registration_wait_seconds": 0.3}
    )
    sock = serving.bind_socket(pool_settings.model_copy(update={"host": "127.0.0.1", "port": 0}))
    registry = Registry()
    server = serving.gateway_server(pool_settings, services, registry)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield RunningPool(
            f"ws://127.0.0.1:{sock.getsockname()[1]}", registry, server, pool_settings
        )
    finally:
        server.should_exit = True
        await task


async def test_a_registered_session_streams_with_its_own_token(
    settings: Settings, services: Services
) -> None:
    async with running_pool(settings, services) as pool:
        pool.register("call-a")
        result = await client.stream(
            session_url(pool.base, "call-a"),
            speech_frames(),
            frame_seconds=FRAME_SECONDS,
            speed=0,
            linger=5.0,
            token="t0ken",
        )
    assert result.finals, "the registered session was not recognised"
    assert result.errors == []


async def test_a_session_is_refused_with_another_sessions_token(
    settings: Settings, services: Services
) -> None:
    async with running_pool(settings, services) as pool:
        pool.register("call-a", token="token-of-a")
        pool.register("call-b", token="token-of-b", idleTimeoutSeconds=1)
        received, code, _ = await until_closed(
            session_url(pool.base, "call-a"), [b"\xd5" * 160], token="token-of-b"
        )
        no_token, no_token_code, _ = await until_closed(
            session_url(pool.base, "call-a"), [b"\xd5" * 160]
        )
        own, own_code, _ = await until_closed(
            session_url(pool.base, "call-b"), [b"\xd5" * 160], token="token-of-b"
        )
    assert code == no_token_code == 1008
    assert received[0]["code"] == no_token[0]["code"] == "unauthorized"
    # its own token: admitted, then closed for idling after its own 1 s
    assert own_code == 1000
    assert [m["code"] for m in own if m.get("type") == "error"] == ["idle_timeout"]


async def test_a_session_not_registered_is_refused(settings: Settings, services: Services) -> None:
    async with running_pool(settings, services) as pool:
        pool.register("call-a")
        received, code, _ = await until_closed(
            session_url(pool.base, "call-z"), [b"\xd5" * 160], token="t0ken"
        )
    assert code == 1008
    assert received[0]["code"] == "session_not_registered"
    assert "call-z is not registered with this gateway pool" in str(received[0]["message"])


async def test_a_session_registered_while_its_client_connects_is_admitted(
    settings: Settings, services: Services
) -> None:
    async with running_pool(settings, services) as pool:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: pool.register("call-late", idleTimeoutSeconds=1))
        received, code, _ = await until_closed(
            session_url(pool.base, "call-late"), [b"\xd5" * 160], token="t0ken"
        )
    assert code == 1000
    assert [m["code"] for m in received if m.get("type") == "error"] == ["idle_timeout"]


async def test_the_handshake_completes_once_the_session_is_admitted_and_its_audio_is_accepted(
    settings: Settings, services: Services
) -> None:
    # The pool learns the session 0.2 s after its client connects (its watch lagging the
    # operator's Ready): the handshake waits for the registration, then the audio sent right
    # after it is recognised.
    async with running_pool(settings, services) as pool:
        registered_at: list[float] = []

        def register() -> None:
            pool.register("call-early")
            registered_at.append(time.monotonic())

        asyncio.get_running_loop().call_later(0.2, register)
        headers = {"Authorization": "Bearer t0ken"}
        async with connect(session_url(pool.base, "call-early"), additional_headers=headers) as ws:
            opened_at = time.monotonic()
            for frame in speech_frames():
                await ws.send(frame)
            first = json.loads(await asyncio.wait_for(ws.recv(), 30.0))
    [registered] = registered_at
    assert opened_at >= registered, (
        f"the handshake completed {registered - opened_at:.3f} s before the session was registered"
    )
    assert first["type"] in ("partial", "final"), first


async def test_a_refused_connection_hears_why_first_after_the_handshake(
    settings: Settings, services: Services
) -> None:
    # Refused only once the registration wait (0.3 s here) is over, and told so at once.
    async with running_pool(settings, services) as pool:
        started = time.monotonic()
        async with connect(session_url(pool.base, "call-never")) as ws:
            opened_at = time.monotonic()
            first = json.loads(await asyncio.wait_for(ws.recv(), 5.0))
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
    assert opened_at - started >= pool.settings.registration_wait_seconds
    assert first["code"] == "session_not_registered"
    assert ws.close_code == 1008


async def test_a_connection_waiting_for_admission_when_the_gateway_stops_hears_it_is_shutting_down(
    settings: Settings, services: Services
) -> None:
    # The shutdown begins while the connection waits for its registration (the pool's watch
    # lagging, as during a rollout): it is still accepted and told, not answered with HTTP 500.
    async with running_pool(settings, services) as pool:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, lambda: setattr(pool.server, "should_exit", True))
        loop.call_later(0.2, lambda: pool.register("call-stopping"))
        received, code, reason = await until_closed(
            session_url(pool.base, "call-stopping"), [b"\xd5" * 160], token="t0ken"
        )
    assert (code, reason) == (1012, "service restart")
    assert [m["code"] for m in received if m.get("type") == "error"] == ["shutting_down"]


async def test_each_session_streams_with_its_own_settings(
    settings: Settings, services: Services
) -> None:
    async with running_pool(settings, services) as pool:
        pool.register("quiet", returnTranscription=False)
        pool.register("loud")
        quiet, loud = await asyncio.gather(
            *(
                client.stream(
                    session_url(pool.base, name),
                    speech_frames(),
                    frame_seconds=FRAME_SECONDS,
                    speed=0,
                    linger=3.0,
                    token="t0ken",
                )
                for name in ("quiet", "loud")
            )
        )
    assert loud.finals
    assert (quiet.partials, quiet.finals) == ([], [])  # stored, not sent: its own setting
    stored = await services.stores.segments.segments(SessionId("quiet"))
    assert stored, "the quiet session's text was not stored"


async def test_each_pooled_session_is_stored_with_its_own_language(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    async with running_pool(settings, services) as pool:
        pool.register("chinese", language="zh")
        pool.register("english", language="en")
        pool.register("unsaid")
        await asyncio.gather(
            *(
                client.stream(
                    session_url(pool.base, name),
                    speech_frames(),
                    frame_seconds=FRAME_SECONDS,
                    speed=0,
                    linger=1.0,
                    token="t0ken",
                )
                for name in ("chinese", "english", "unsaid")
            )
        )
    with contextlib.closing(sqlite3.connect(tmp_path / "seg.db")) as db:
        stored = db.execute("SELECT id, language FROM sessions ORDER BY id").fetchall()
    assert stored == [("chinese", "zh"), ("english", "en"), ("unsaid", None)]


async def _streaming_past_a_final(
    pool: RunningPool, session_id: str
) -> asyncio.Task[client.StreamResult]:
    """A real-time stream of minutes of speech to ``session_id``, once it has had a final."""
    frames = client.frames_of(demoing.sample_audio() * 20, codec=Codec.ALAW, rate=8000, frame_ms=20)
    got_final = asyncio.Event()
    streaming = asyncio.create_task(
        client.stream(
            session_url(pool.base, session_id),
            frames,
            frame_seconds=FRAME_SECONDS,
            speed=1.0,
            token="t0ken",
            on_message=lambda m: got_final.set() if m["type"] == "final" else None,
        )
    )
    await asyncio.wait_for(got_final.wait(), 30.0)
    return streaming


async def test_an_unregistered_session_has_its_live_stream_ended_and_its_finals_kept(
    settings: Settings, services: Services
) -> None:
    async with running_pool(settings, services) as pool:
        resource = pool.register("call-end")
        streaming = await _streaming_past_a_final(pool, "call-end")
        ended_at = time.monotonic()
        pool.unregister(resource, "its TranscriptionSession was deleted")
        result = await asyncio.wait_for(streaming, 15.0)
        took = time.monotonic() - ended_at
    assert result.close_code == 1000
    assert result.close_reason == "session ended"
    [error] = result.errors
    assert error["code"] == "session_ended"
    assert "its TranscriptionSession was deleted" in error["message"]
    assert took < 10.0, f"the stream ended {took:.1f} s after its session"
    stored = await services.stores.segments.segments(SessionId("call-end"))
    assert [(s.seq, s.text) for s in stored][: len(result.finals)] == [
        (f["seq"], f["text"]) for f in result.finals
    ]


async def test_a_stream_goes_on_when_another_resources_registration_of_its_id_is_withdrawn(
    settings: Settings, services: Services
) -> None:
    # Two sessions registering one id for a moment (the operator then withdraws the younger's):
    # the stream the older's registration admitted is not ended with the younger's.
    async with running_pool(settings, services) as pool:
        held = pool.register("call-held", sessionId="shared")
        streaming = await _streaming_past_a_final(pool, "shared")
        younger = pool.register("call-younger", sessionId="shared", token="another")
        pool.unregister(younger, "its TranscriptionSession was deleted")
        await asyncio.sleep(3.0)  # an ended stream reads on for at most 2 s, then closes
        assert not streaming.done(), "the stream ended with another resource's registration"
        pool.unregister(held, "its TranscriptionSession was deleted")
        result = await asyncio.wait_for(streaming, 15.0)
    [error] = result.errors
    assert error["code"] == "session_ended"
    assert result.close_code == 1000
