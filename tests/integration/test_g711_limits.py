"""Overload, a second connection of one session, the connection cap, the handshake timeout and
health, over a real uvicorn gateway and real WebSocket clients, around the scripted recogniser
of :mod:`tests.integration.scripted`.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime

import httpx
import pytest
from websockets.asyncio.client import connect

from earshot.events import Segment, SessionId
from earshot.gateways.g711.app import Services
from earshot.persistence.spool import SpoolError
from earshot.settings import Settings
from tests.gateway import session_url
from tests.integration.scripted import (
    CHUNK,
    fill_the_queue,
    heard,
    scripted_gateway,
    stored,
    until_closed,
)


async def test_a_stream_refused_for_overload_still_stores_its_pending_text(
    settings: Settings, services: Services
) -> None:
    async with scripted_gateway(settings, services) as (base, decoder):
        async with connect(session_url(base, "a")) as a:
            await a.send(CHUNK)
            assert await heard(a) == {"type": "partial", "text": "hearing", "seq": 1}
            blocker = await fill_the_queue(base, decoder)
            await a.send(CHUNK)
            received = await until_closed(a)
        assert received[-1]["code"] == "inference_overloaded"
        assert a.close_code == 1013
        # Finishing took no queue slot: the stream's text is stored while the queue is still full.
        texts = await stored(services, "a", 1)
        decoder.release.set()
        await blocker.close()
    assert len(texts) == 1
    assert texts[0][0] == 1
    assert texts[0][1].startswith("heard ")


async def test_a_stream_closed_while_the_queue_is_full_stores_its_pending_text(
    settings: Settings, services: Services
) -> None:
    async with scripted_gateway(settings, services) as (base, decoder):
        async with connect(session_url(base, "a")) as a:
            await a.send(CHUNK)
            assert await heard(a) == {"type": "partial", "text": "hearing", "seq": 1}
            blocker = await fill_the_queue(base, decoder)
        texts = await stored(services, "a", 1)
        decoder.release.set()
        await blocker.close()
    assert [seq for seq, _ in texts] == [1]


async def test_a_newer_connection_takes_a_session_over_and_no_number_is_told_twice(
    settings: Settings, services: Services
) -> None:
    async with scripted_gateway(settings, services) as (base, _):
        async with connect(session_url(base, "same")) as older:
            await older.send(CHUNK)
            assert await heard(older) == {"type": "partial", "text": "hearing", "seq": 1}
            async with connect(session_url(base, "same")) as newer:
                ended = await until_closed(older)
                # The older connection's pending text became final 1 (stored, not told).
                await newer.send(CHUNK)
                assert await heard(newer) == {"type": "partial", "text": "hearing", "seq": 2}
            # Once that one has ended too, a reconnect continues after it.
            async with connect(session_url(base, "same")) as again:
                await again.send(CHUNK)
                assert await heard(again) == {"type": "partial", "text": "hearing", "seq": 3}
        texts = await stored(services, "same", 3)
    assert ended == [
        {
            "type": "error",
            "code": "session_taken_over",
            "message": "a newer connection of this session took over; this one ends and its last "
            "segment is stored",
            "retryable": False,
        }
    ]
    assert (older.close_code, older.close_reason) == (1000, "session taken over")
    assert [seq for seq, _ in texts] == [1, 2, 3]


async def test_streams_past_the_connection_cap_are_refused_with_1013(
    settings: Settings, services: Services
) -> None:
    capped = settings.model_copy(update={"max_connections": 2})
    async with scripted_gateway(capped, services) as (base, _):
        async with (
            connect(session_url(base, "one")) as one,
            connect(session_url(base, "two")) as two,
        ):
            for ws in (one, two):
                await ws.send(CHUNK)
                assert (await heard(ws))["type"] == "partial"
            async with connect(session_url(base, "three")) as three:
                refused = await until_closed(three)
        assert refused == [
            {
                "type": "error",
                "code": "too_many_connections",
                "message": "this gateway is serving its limit of 2 streams; retry later",
                "retryable": True,
            }
        ]
        assert (three.close_code, three.close_reason) == (1013, "too many connections")
        # The cap counts live streams: once those ended, a new one is served.
        await stored(services, "two", 1)
        async with connect(session_url(base, "three")) as again:
            await again.send(CHUNK)
            assert (await heard(again))["type"] == "partial"


@pytest.mark.parametrize("sent", [b"", b"GET /ws/transcribe/slow HTTP/1.1\r\nHost: x\r\n"])
async def test_a_connection_without_a_whole_request_is_closed_at_the_handshake_timeout(
    settings: Settings, services: Services, sent: bytes
) -> None:
    quick = settings.model_copy(update={"handshake_timeout_seconds": 0.3})
    async with scripted_gateway(quick, services) as (base, _):
        port = int(base.rsplit(":", 1)[1])

        def silent_client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
                sock.sendall(sent)
                return sock.recv(100)  # b"" once the server closes; a timeout error otherwise

        assert await asyncio.to_thread(silent_client) == b""
        # A client that sends its request in time is served as usual.
        async with connect(session_url(base, "prompt")) as prompt:
            await prompt.send(CHUNK)
            assert (await heard(prompt))["type"] == "partial"


async def test_health_fails_once_the_spool_writer_thread_died(
    settings: Settings, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scripted_gateway(settings, services) as (base, _):
        url = base.replace("ws://", "http://") + "/health"
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
            writer = services.stores.journal._writer

            def broken(appends: object) -> None:
                raise RuntimeError("a bug in the writer thread")

            monkeypatch.setattr(writer, "_commit", broken)
            with pytest.raises(SpoolError):
                await services.stores.journal.final(
                    Segment(SessionId("x"), 1, "lost with the thread", datetime.now(UTC))
                )
            answer = await http.get(url)
    assert answer.status_code == 503
    assert answer.json()["status"] == "failing"
