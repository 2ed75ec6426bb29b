"""What a TranscriptionSession's settings do to the telephony gateway, over a real WebSocket.

The gateway is the real app on uvicorn with the embedded default stores (SQLite segments, memory
partials) and the tiny in-process Paraformer; each test sets what the operator would set.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

import prometheus_client
import pytest
from pydantic import SecretStr

from earshot.events import SessionId
from earshot.gateways.g711 import client, serving
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url, until_closed
from tests.integration.test_g711_gateway import speech_frames, stream_sample
from tests.persister import rows

pytestmark = pytest.mark.integration


async def test_a_gateway_made_for_a_session_refuses_another_id_with_1008_naming_its_own(
    settings: Settings, services: Services
) -> None:
    own = settings.model_copy(update={"session_id": "call-1"})
    async with running_gateway(own, services) as base:
        received, code, _ = await until_closed(session_url(base, "call-2"), [b"\xd5" * 160])
        served = await stream_sample(session_url(base, "call-1"))
    assert code == 1008
    assert received == [
        {
            "type": "error",
            "code": "session_not_served",
            "message": "this gateway serves only session 'call-1', not 'call-2': connect to "
            "/ws/transcribe/call-1",
            "retryable": False,
        }
    ]
    assert await services.stores.segments.segments(SessionId("call-2")) == []
    assert served.finals
    assert served.close_code == 1000


async def test_the_session_id_is_told_only_to_a_client_with_the_token(
    settings: Settings, services: Services
) -> None:
    own = settings.model_copy(
        update={"session_id": "call-1", "access_token": SecretStr("s3cret"), "auth": "token"}
    )
    async with running_gateway(own, services) as base:
        received, code, _ = await until_closed(session_url(base, "call-2"), [])
    assert code == 1008
    assert [m["code"] for m in received] == ["unauthorized"]
    assert "call-1" not in json.dumps(received)


async def test_auth_none_admits_a_legacy_client_that_sends_no_token(
    settings: Settings, services: Services
) -> None:
    open_door = settings.model_copy(update={"auth": "none", "session_id": "legacy"})
    async with running_gateway(open_door, services) as base:
        result = await stream_sample(session_url(base, "legacy"))
    assert result.errors == []
    assert result.finals
    assert result.close_code == 1000


async def test_auth_token_refuses_a_client_without_the_token_and_admits_one_with_it(
    settings: Settings, services: Services
) -> None:
    guarded = settings.model_copy(update={"auth": "token", "access_token": SecretStr("s3cret")})
    async with running_gateway(guarded, services) as base:
        refused, code, _ = await until_closed(session_url(base, "door"), [b"\xd5" * 160])
        admitted = await stream_sample(session_url(base, "door"), token="s3cret")
    assert code == 1008
    assert [m["code"] for m in refused] == ["unauthorized"]
    assert admitted.finals
    assert admitted.errors == []


async def test_the_user_id_is_stored_as_the_sessions_user(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    owned = settings.model_copy(update={"user_id": "alice"})
    async with running_gateway(owned, services) as base:
        result = await stream_sample(session_url(base, "owned"))
    assert result.finals
    with contextlib.closing(sqlite3.connect(tmp_path / "seg.db")) as db:
        rows = db.execute("SELECT id, user_id FROM sessions").fetchall()
    assert rows == [("owned", "alice")]


async def test_the_declared_language_is_stored_as_the_sessions_language(
    settings: Settings, services: Services, tmp_path: Path
) -> None:
    for language, session in (("zh", "declared"), ("auto", "undeclared")):
        declaring = settings.model_copy(update={"language": language})
        async with running_gateway(declaring, services) as base:
            result = await stream_sample(session_url(base, session))
        assert result.finals
    with contextlib.closing(sqlite3.connect(tmp_path / "seg.db")) as db:
        rows = db.execute("SELECT id, language FROM sessions ORDER BY id").fetchall()
    assert rows == [("declared", "zh"), ("undeclared", None)]


async def test_a_stream_without_audio_for_the_idle_timeout_is_finalised_stored_and_closed(
    settings: Settings, services: Services
) -> None:
    idle = settings.model_copy(update={"idle_timeout_seconds": 1.0})
    async with running_gateway(idle, services) as base:
        started = time.monotonic()
        received, code, reason = await until_closed(
            session_url(base, "quiet"), speech_frames(trailing_silence=False)
        )
        waited = time.monotonic() - started
        # leaving the block waits for the stream to finish: the pending text is then stored
    error, pending = received[-1], received[-2]
    assert (code, reason) == (1000, "idle timeout")
    assert error == {
        "type": "error",
        "code": "idle_timeout",
        "message": "no audio for 1 s (EARSHOT_IDLE_TIMEOUT_SECONDS): the stream is closed and "
        "what was recognised is stored",
        "retryable": True,
    }
    assert waited >= 1.0
    assert pending["type"] == "partial", "no partial was pending: the test would show nothing"
    stored = await services.stores.segments.segments(SessionId("quiet"))
    assert stored[-1].seq == pending["seq"]
    assert stored[-1].text.startswith(str(pending["text"]))


async def test_a_stream_that_keeps_sending_is_not_closed_by_the_idle_timeout(
    settings: Settings, services: Services
) -> None:
    # a frame every 10 ms for about 5 s against a 2 s timeout: only silence on the wire counts
    idle = settings.model_copy(update={"idle_timeout_seconds": 2.0})
    async with running_gateway(idle, services) as base:
        result = await client.stream(
            session_url(base, "talking"),
            speech_frames(),
            frame_seconds=0.02,
            speed=2.0,
            linger=0.3,
        )
    assert result.errors == []
    assert result.close_code == 1000
    assert result.finals


async def test_an_idle_close_is_counted(settings: Settings, services: Services) -> None:
    def closes() -> float:
        value = prometheus_client.REGISTRY.get_sample_value(
            "earshot_idle_closes_total", {"gateway": "g711"}
        )
        return value or 0.0

    before = closes()
    idle = settings.model_copy(update={"idle_timeout_seconds": 0.2})
    async with running_gateway(idle, services) as base:
        _, code, _ = await until_closed(session_url(base, "counted"), [])
    assert code == 1000
    assert closes() == before + 1


async def test_the_user_id_reaches_mysql_through_the_embedded_persister(
    tiny_model_cache: Path, tmp_path: Path, mysql_url: str
) -> None:
    owned = Settings(
        cache_dir=tiny_model_cache,
        segments_url=mysql_url,
        spool_dir=tmp_path / "mysql-spool",
        user_id="carol",
    )
    async with serving.open_services(owned) as services:
        async with running_gateway(owned, services) as base:
            result = await stream_sample(session_url(base, "owned"))
        assert result.finals
    # leaving open_services drained the spool into MySQL
    assert await rows(mysql_url, "SELECT id, user_id FROM sessions") == [("owned", "carol")]
