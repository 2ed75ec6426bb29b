"""Refusals at the telephony gateway's edge that need a stalled or odd decoder to happen: a session
still finishing on an older connection past the handover wait, a final too long to store, and no
unhandled traceback while the inference queue refuses a stream.

The real uvicorn gateway and batching recogniser of tests/integration/scripted.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import httpx
import pytest
from websockets.asyncio.client import connect

from earshot.events import Recognition
from earshot.gateways.g711 import app, serving
from earshot.gateways.g711.app import Services
from earshot.persistence.draining import Drainer
from earshot.persistence.records import MAX_TEXT_BYTES
from earshot.settings import Settings
from tests.gateway import session_url
from tests.hanging import HangingSegmentWrites
from tests.integration.scripted import (
    CHUNK,
    ScriptedDecoder,
    ScriptedStream,
    fill_the_queue,
    heard,
    scripted_gateway,
    stored,
    until_closed,
)


def tracebacks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> list[str]:
    """Tracebacks logged through logging (ours) or printed by uvicorn's own handlers."""
    logged = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]
    printed = [line for line in capfd.readouterr().err.splitlines() if "Traceback" in line]
    return logged + printed


async def test_a_session_still_finishing_past_the_handover_wait_is_refused_with_1013(
    settings: Settings, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "HANDOVER_WAIT_SECONDS", 0.3)
    async with scripted_gateway(settings, services) as (base, decoder):
        async with connect(session_url(base, "slow")) as older:
            await older.send(CHUNK)
            assert await heard(older) == {"type": "partial", "text": "hearing", "seq": 1}
            # The older connection's last decode (its finish) stalls: the handover cannot complete.
            decoder.hold_next()
            async with connect(session_url(base, "slow")) as newer:
                refused = await until_closed(newer)
            assert await asyncio.to_thread(decoder.held.wait, 10.0)
            decoder.release.set()
        texts = await stored(services, "slow", 1)
    assert refused == [
        {
            "type": "error",
            "code": "session_in_use",
            "message": "session slow is still finishing on another connection; retry later",
            "retryable": True,
        }
    ]
    assert (newer.close_code, newer.close_reason) == (1013, "session in use")
    # The older connection's text is stored all the same, as final 1.
    assert [seq for seq, _ in texts] == [1]


class TooLongSecondFinal(ScriptedDecoder):
    """The first decode of a stream ends a segment "first"; later ones, one the stores refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded: set[int] = set()

    def decode(self, streams: Sequence[ScriptedStream]) -> list[list[Recognition]]:
        answers: list[list[Recognition]] = []
        for stream in streams:
            if stream.ended:
                answers.append([])
            elif id(stream) not in self.decoded:
                self.decoded.add(id(stream))
                answers.append([Recognition("first", True)])
            else:
                answers.append([Recognition("x" * (MAX_TEXT_BYTES + 1), True)])
        return answers


async def test_a_final_too_long_to_store_closes_with_1011_and_keeps_the_earlier_finals(
    settings: Settings, services: Services
) -> None:
    async with scripted_gateway(settings, services, decoder=TooLongSecondFinal()) as (base, _):
        async with connect(session_url(base, "long")) as ws:
            await ws.send(CHUNK)
            assert await heard(ws) == {"type": "final", "text": "first", "seq": 1}
            await ws.send(CHUNK)
            received = await until_closed(ws)
        texts = await stored(services, "long", 1)
    assert received == [
        {
            "type": "error",
            "code": "result_out_of_range",
            "message": "a result cannot be stored: text is 65536 bytes long; at most 65535 are "
            "allowed",
            "retryable": False,
        }
    ]
    assert ws.close_code == 1011
    assert texts == [(1, "first")]


async def test_a_stream_refused_for_overload_logs_no_traceback(
    settings: Settings,
    services: Services,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    async with scripted_gateway(settings, services) as (base, decoder):
        async with connect(session_url(base, "a")) as a:
            await a.send(CHUNK)
            assert await heard(a) == {"type": "partial", "text": "hearing", "seq": 1}
            blocker = await fill_the_queue(base, decoder)
            await a.send(CHUNK)
            received = await until_closed(a)
        await stored(services, "a", 1)
        decoder.release.set()
        await blocker.close()
    assert received[-1]["code"] == "inference_overloaded"
    assert tracebacks(caplog, capfd) == []


async def test_health_fails_once_the_embedded_drainer_stopped(
    settings: Settings, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.persister == "embedded"

    async def broken(self: Drainer) -> int:
        raise RuntimeError("a bug in the drainer")

    async with scripted_gateway(settings, services) as (base, _):
        url = base.replace("ws://", "http://") + "/health"
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).status_code == 200
            monkeypatch.setattr(Drainer, "_round", broken)
            async with connect(session_url(base, "d")) as ws:
                await ws.send(CHUNK)
                await heard(ws)
            answers = [await http.get(url)]
            for _ in range(50):
                if answers[-1].status_code == 503:
                    break
                await asyncio.sleep(0.1)
                answers.append(await http.get(url))
    assert answers[-1].status_code == 503
    assert answers[-1].json()["reason"] == "persistence stopped working"


async def health_when(http: httpx.AsyncClient, url: str, status: int) -> httpx.Response:
    """The first ``/health`` answer with ``status``, or the last one after 20 s."""
    answer = await http.get(url)
    for _ in range(200):
        if answer.status_code == status:
            break
        await asyncio.sleep(0.1)
        answer = await http.get(url)
    return answer


async def test_health_fails_while_the_embedded_drainer_hangs_in_a_store_write(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    stalling = settings.model_copy(update={"persister_stall_seconds": 2.0})
    async with (
        serving.open_services(stalling) as services,
        scripted_gateway(stalling, services) as (base, _),
        httpx.AsyncClient() as http,
    ):
        url = base.replace("ws://", "http://") + "/health"
        healthy = await http.get(url)
        hanging = HangingSegmentWrites(monkeypatch)
        try:
            async with connect(session_url(base, "h")) as ws:
                await ws.send(CHUNK)
                await heard(ws)
            await asyncio.wait_for(hanging.entered.wait(), 20.0)
            stuck = await health_when(http, url, 503)
        finally:
            hanging.let_go()
        moving = await health_when(http, url, 200)
        texts = await stored(services, "h", 1)
    assert healthy.status_code == 200
    assert stuck.status_code == 503
    assert stuck.json()["reason"] == "persistence stopped working"
    # A store write that hangs is a stall, not a death: the drainer beats again once it returns,
    # and what it was writing is stored.
    assert moving.status_code == 200
    assert [seq for seq, _ in texts] == [1]
