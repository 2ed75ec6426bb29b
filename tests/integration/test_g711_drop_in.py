"""earshot in place of the older telephony server: what its users' clients, probes and tools see.

A real uvicorn gateway on the tiny in-process engine and the embedded stores, real WebSocket and
HTTP clients. The settings are built from the environment as ``earshot serve`` builds them, so the
older server's variable names are read exactly as they would be from its ``.env``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import g711
import httpx
import numpy as np
import prometheus_client
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.audio import codecs
from earshot.cli import demoing, streaming
from earshot.gateways.g711 import serving
from earshot.settings import LEGACY_USER_ID, Settings
from tests.gateway import running_gateway, session_url

SIMULATOR_CHUNK_SECONDS = 0.6


def legacy_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **old: str) -> Settings:
    """Settings from an environment that uses the older server's names (as its .env did)."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    monkeypatch.setenv("MYSQL_DATABASE_URL", f"sqlite:///{tmp_path / 'old.db'}")
    for name, value in old.items():
        monkeypatch.setenv(name, value)
    return Settings()


@asynccontextmanager
async def gateway(settings: Settings, cache: Path, spool: Path) -> AsyncIterator[tuple[str, str]]:
    """A gateway on ``settings`` (tiny model from ``cache``); yields its ws:// and http:// bases."""
    configured = settings.model_copy(update={"cache_dir": cache, "spool_dir": spool})
    async with (
        serving.open_services(configured) as services,
        running_gateway(configured, services) as base,
    ):
        yield base, base.replace("ws://", "http://", 1)


def sample_wav(path: Path) -> Path:
    """The bundled sample as a 16-bit 8 kHz WAV, the kind of file the simulators read."""
    pcm = (codecs.decode(demoing.sample_audio(), codecs.Codec.ALAW) * 32768).astype("<i2")
    silence = np.zeros(2 * 8000, dtype="<i2")  # so the last segment ends while the client listens
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(np.concatenate([pcm, silence]).tobytes())
    return path


async def simulator(url: str, wav_path: Path) -> list[dict[str, object]]:
    """What the older server's simulators do: a WAV's A-law payload in 600 ms chunks, every server
    message parsed as JSON and kept, a short wait for the last final, then close."""
    with wave.open(str(wav_path), "rb") as wav:
        rate = wav.getframerate()
        payload = g711.encode_alaw(
            np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float32)
            / 32768.0
        )
    chunk = int(rate * SIMULATOR_CHUNK_SECONDS)
    received: list[dict[str, object]] = []
    async with connect(url) as ws:

        async def listen() -> None:
            try:
                async for raw in ws:
                    received.append(json.loads(raw))
            except ConnectionClosed:
                pass

        listener = asyncio.create_task(listen())
        for start in range(0, len(payload), chunk):
            await ws.send(payload[start : start + chunk])
        for _ in range(100):  # up to 10 s for the server to catch up and send its last final
            if received and received[-1]["type"] == "final":
                break
            await asyncio.sleep(0.1)
        await ws.close()
        await listener
    return received


async def test_a_client_written_for_the_older_server_works_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path, AUDIO_INPUT_FORMAT="alaw")
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, _):
        received = await simulator(session_url(ws, "call-42"), sample_wav(tmp_path / "in.wav"))
    finals = [m for m in received if m["type"] == "final"]
    partials = [m for m in received if m["type"] == "partial"]
    assert partials, received
    assert finals, received
    assert {m["type"] for m in received} == {"partial", "final"}
    assert all(set(m) == {"type", "text", "seq"} and m["text"] for m in received)
    assert [m["seq"] for m in finals] == list(range(1, len(finals) + 1))
    with sqlite3.connect(tmp_path / "old.db") as db:
        stored = db.execute(
            "SELECT segment_seq, content FROM segments WHERE session_id = 'call-42' "
            "ORDER BY segment_seq"
        ).fetchall()
        users = db.execute("SELECT id, user_id FROM sessions").fetchall()
    assert stored == [(m["seq"], m["text"]) for m in finals]
    assert users == [("call-42", LEGACY_USER_ID)]


async def test_health_keeps_the_older_servers_keys_beside_ours(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path, PROJECT_NAME="switchboard-asr")
    async with (
        gateway(settings, tiny_model_cache, tmp_path / "spool") as (_, http),
        httpx.AsyncClient(base_url=http) as web,
    ):
        response = await web.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert {"status", "config", "project_name", "model_status", "engine", "settings"} <= set(body)
    # The older server's keys with its values: a probe that checks config == "loaded" passes.
    assert (body["status"], body["config"], body["project_name"], body["model_status"]) == (
        "ok",
        "loaded",
        "switchboard-asr",
        "loaded",
    )
    assert body["settings"]["inference_queue_timeout_seconds"] == 20.0
    assert body["settings"]["endpoint_rules_seconds"] == [3.0, 1.2, 300.0]
    assert body["settings"]["bad_frame_policy"] == "skip"
    assert "sqlite" not in json.dumps(body), "a store URL (with its password) must not show"


@pytest.mark.parametrize(
    ("request_path", "headers"),
    [("/metrics", {"Accept": "application/json"}), ("/metrics/json", {})],
)
async def test_metrics_are_a_json_snapshot_where_json_is_asked_for(
    request_path: str,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_model_cache: Path,
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path)
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, http):
        await simulator(session_url(ws, "counted"), sample_wav(tmp_path / "in.wav"))
        async with httpx.AsyncClient(base_url=http) as web:
            response = await web.get(request_path, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    frames = response.json()["metrics"]["earshot_frames_received_total"]
    expected = prometheus_client.REGISTRY.get_sample_value(
        "earshot_frames_received_total", {"gateway": "g711"}
    )
    assert [s["value"] for s in frames if s["labels"] == {"gateway": "g711"}] == [expected]


#: The JSON ``/metrics`` of the older server (AirSodaz/PyStreamASR, ``main.py`` ``metrics()``, its
#: ``core/metrics.py`` and ``BoundedInferenceExecutor.snapshot()``): each group's keys, and whether
#: a key is a count (int) or seconds (float).
OLDER_SERVER_METRICS: dict[str, dict[str, type]] = {
    "inference": {
        "max_workers": int,
        "queue_size": int,
        "inflight": int,
        "completed": int,
        "rejected_overloaded": int,
        "timed_out": int,
        "cpu_latency_seconds": float,
        "total_latency_seconds": float,
    },
    "connections": {
        "active": int,
        "opened": int,
        "closed": int,
        "disconnected": int,
        "errors": int,
        "duration_seconds": float,
    },
    "websocket": {
        "chunks_received": int,
        "bytes_received": int,
        "receive_errors": int,
        "overload_closes": int,
    },
    "audio": {"processed_chunks": int, "processing_errors": int, "processing_seconds": float},
    "transcription": {"partials": int, "finals": int, "empty_results": int, "auto_finalized": int},
    "storage": {
        "partial_saves": int,
        "final_saves": int,
        "save_errors": int,
        "partial_seconds": float,
        "final_seconds": float,
    },
}


def _older_layout(body: dict[str, object]) -> dict[str, dict[str, float]]:
    """The older server's groups of a JSON snapshot, checked key by key and type by type."""
    assert set(body) == {"model_loaded", "metrics", *OLDER_SERVER_METRICS}
    assert body["model_loaded"] is True
    groups: dict[str, dict[str, float]] = {}
    for group, keys in OLDER_SERVER_METRICS.items():
        values = body[group]
        assert isinstance(values, dict)
        assert set(values) == set(keys), group
        for key, kind in keys.items():
            assert type(values[key]) is kind, (group, key, values[key])
            assert values[key] >= 0, (group, key)
        groups[group] = values
    return groups


def _finals_made(groups: dict[str, dict[str, float]]) -> float:
    return groups["transcription"]["finals"]


async def test_json_metrics_have_the_older_servers_layout_and_count_a_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path)
    wav = sample_wav(tmp_path / "in.wav")
    with wave.open(str(wav), "rb") as audio:
        samples = audio.getnframes()
    chunk = int(8000 * SIMULATOR_CHUNK_SECONDS)
    async with (
        gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, http),
        httpx.AsyncClient(base_url=http) as web,
    ):
        before = _older_layout((await web.get("/metrics/json")).json())
        received = await simulator(session_url(ws, "metered"), wav)
        after = before
        for _ in range(100):  # the stream ends and its last final is stored after the client left
            after = _older_layout((await web.get("/metrics/json")).json())
            ended = after["connections"]["closed"] > before["connections"]["closed"]
            if ended and _finals_made(after) - _finals_made(before) == (
                after["storage"]["final_saves"] - before["storage"]["final_saves"]
            ):
                break
            await asyncio.sleep(0.1)
    with sqlite3.connect(tmp_path / "old.db") as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM segments").fetchone()

    def grew(group: str, key: str) -> float:
        return after[group][key] - before[group][key]

    chunks = -(-samples // chunk)  # 600 ms chunks, the last one shorter
    told = [m for m in received if m["type"] == "final"]
    assert (grew("connections", "opened"), grew("connections", "closed")) == (1, 1)
    assert (grew("connections", "disconnected"), grew("connections", "errors")) == (1, 0)
    assert after["connections"]["active"] == 0
    assert grew("connections", "duration_seconds") > 0
    assert (grew("websocket", "chunks_received"), grew("websocket", "bytes_received")) == (
        chunks,
        samples,  # one A-law byte per sample
    )
    assert grew("audio", "processed_chunks") == grew("inference", "completed") == chunks
    assert grew("audio", "processing_seconds") > 0
    assert grew("inference", "total_latency_seconds") > 0
    assert grew("inference", "cpu_latency_seconds") > 0
    assert (after["inference"]["max_workers"], after["inference"]["queue_size"]) == (1, 256)
    assert after["inference"]["inflight"] == 0
    assert grew("transcription", "partials") >= len([m for m in received if m["type"] == "partial"])
    assert grew("transcription", "finals") >= len(told) > 0
    # As in the older server, a final made when the stream ended counts as a final too.
    assert grew("transcription", "finals") == stored
    assert 0 <= grew("transcription", "auto_finalized") <= grew("transcription", "finals")
    assert 0 < grew("transcription", "empty_results") < chunks
    assert grew("storage", "final_saves") == stored
    # The drainer writes the latest partial of a session, when a final has not superseded it yet.
    assert grew("storage", "partial_saves") <= grew("transcription", "partials")
    assert grew("storage", "final_seconds") > 0


async def test_prometheus_keeps_its_text_format(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path)
    async with (
        gateway(settings, tiny_model_cache, tmp_path / "spool") as (_, http),
        httpx.AsyncClient(base_url=http) as web,
    ):
        # What Prometheus sends: text first, anything after.
        accept = (
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )
        scraped = await web.get("/metrics", headers={"Accept": accept})
        plain = await web.get("/metrics")
    for response in (scraped, plain):
        assert response.headers["content-type"].startswith("text/plain")
        assert "# TYPE earshot_frames_received_total counter" in response.text


def _odd_frames() -> list[bytes]:
    """PCM16 speech in 20 ms frames with a 3-byte frame (half a sample too many) in the middle."""
    pcm = (codecs.decode(demoing.sample_audio(), codecs.Codec.ALAW) * 32768).astype("<i2")
    audio = streaming.with_trailing_silence(pcm.tobytes(), codecs.Codec.PCM16LE, 8000)
    frames = [audio[i : i + 320] for i in range(0, len(audio), 320)]
    return [*frames[:100], b"\x00\x01\x02", *frames[100:]]


async def _send_all(url: str, frames: list[bytes]) -> tuple[list[dict[str, object]], int | None]:
    received: list[dict[str, object]] = []
    async with connect(url) as ws:
        try:
            for frame in frames:
                await ws.send(frame)
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 5.0)))
                if received[-1]["type"] == "final":
                    break
        except ConnectionClosed:
            pass
        await ws.close()
        return received, ws.close_code


def _skipped() -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "earshot_frames_skipped_total", {"gateway": "g711", "reason": "invalid_audio"}
    )
    return value or 0.0


async def test_skip_drops_an_undecodable_frame_counts_it_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path, AUDIO_INPUT_FORMAT="pcm16le")
    assert settings.bad_frame_policy == "skip"
    before = _skipped()
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, _):
        received, close_code = await _send_all(session_url(ws, "odd"), _odd_frames())
    assert _skipped() == before + 1
    assert close_code == 1000
    assert [m["type"] for m in received if m["type"] == "error"] == []
    assert any(m["type"] == "final" for m in received)


async def test_refuse_ends_the_stream_at_an_undecodable_frame_with_1007(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(
        monkeypatch, tmp_path, AUDIO_INPUT_FORMAT="pcm16le", EARSHOT_BAD_FRAME_POLICY="refuse"
    )
    before = _skipped()
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, _):
        received, close_code = await _send_all(session_url(ws, "odd"), _odd_frames())
    assert close_code == 1007
    assert received[-1]["type"] == "error"
    assert received[-1]["code"] == "invalid_audio"
    assert _skipped() == before


async def test_the_debug_audio_dump_holds_what_the_client_sent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    dumps = tmp_path / "dumps"
    settings = legacy_settings(monkeypatch, tmp_path, EARSHOT_DEBUG_AUDIO_DIR=str(dumps))
    wav_in = sample_wav(tmp_path / "in.wav")
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, _):
        await simulator(session_url(ws, "dumped"), wav_in)
    (dump,) = await asyncio.to_thread(lambda: list(dumps.glob("dumped-*.wav")))
    with wave.open(str(wav_in), "rb") as sent, wave.open(str(dump), "rb") as kept:
        assert (kept.getframerate(), kept.getnchannels(), kept.getsampwidth()) == (8000, 1, 2)
        original = np.frombuffer(sent.readframes(sent.getnframes()), dtype="<i2")
        dumped = np.frombuffer(kept.readframes(kept.getnframes()), dtype="<i2")
    assert len(dumped) == len(original)
    # A-law on the wire: the dump is the decoded A-law, within its quantisation step.
    assert np.max(np.abs(dumped.astype(np.int32) - original)) <= 1024


async def test_without_a_dump_directory_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_cache: Path
) -> None:
    settings = legacy_settings(monkeypatch, tmp_path)
    assert settings.debug_audio_dir is None
    wav_in = sample_wav(tmp_path / "in.wav")
    async with gateway(settings, tiny_model_cache, tmp_path / "spool") as (ws, _):
        await simulator(session_url(ws, "quiet"), wav_in)
    assert await asyncio.to_thread(lambda: list(tmp_path.rglob("quiet-*.wav"))) == []
