"""The telephony gateway over a real uvicorn server and a real WebSocket client (PROTOCOLS.md §1).

The recogniser is the real in-process engine on the tiny random-weight Paraformer; the stores are the
embedded defaults (memory partials, SQLite segments).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Sequence

import prometheus_client
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.engines import kyutai, paraformer
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.paraformer import ParaformerDecoder, ParaformerStream
from earshot.engines.stepping import SteppingRecognizer
from earshot.events import Recognition, SessionId
from earshot.gateways.g711 import client
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import WrappedDecoder, running_gateway, session_url, until_closed

FRAME_SECONDS = 0.02


def speech_frames(*, trailing_silence: bool = True) -> list[bytes]:
    audio = demoing.sample_audio()
    if trailing_silence:
        audio = streaming.with_trailing_silence(audio, Codec.ALAW, 8000)
    return client.frames_of(audio, codec=Codec.ALAW, rate=8000, frame_ms=20)


async def stream_sample(url: str, **kwargs: object) -> client.StreamResult:
    return await client.stream(
        url,
        speech_frames(),
        frame_seconds=FRAME_SECONDS,
        speed=0,
        linger=5.0,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_partials_and_finals_have_the_exact_shapes_of_the_protocol(
    settings: Settings, services: Services
) -> None:
    async with running_gateway(settings, services) as base:
        result = await stream_sample(session_url(base, "shapes"))
    assert result.partials, "the sample produced no partial"
    assert result.finals, "the sample produced no final"
    for message in [*result.partials, *result.finals]:
        assert set(message) == {"type", "text", "seq"}
        assert isinstance(message["text"], str)
        assert message["text"]
        assert isinstance(message["seq"], int)
    assert [f["seq"] for f in result.finals] == list(range(1, len(result.finals) + 1))
    final_seqs = {f["seq"] for f in result.finals}
    # A partial announces the number its segment's final will get.
    assert {p["seq"] for p in result.partials} <= final_seqs | {len(result.finals) + 1}
    assert result.errors == []


async def test_finals_are_stored_before_they_are_sent(
    settings: Settings, services: Services
) -> None:
    async with running_gateway(settings, services) as base:
        result = await stream_sample(session_url(base, "stored"))
    stored = await services.stores.segments.segments(SessionId("stored"))
    assert [(s.seq, s.text) for s in stored][: len(result.finals)] == [
        (f["seq"], f["text"]) for f in result.finals
    ]


async def test_reconnect_continues_segment_numbering(
    settings: Settings, services: Services
) -> None:
    # Leaving the block waits for the server to finish the first stream (its disconnect final too):
    # only then is its stored maximum final.
    async with running_gateway(settings, services) as base:
        first = await stream_sample(session_url(base, "again"))
    stored_after_first = await services.stores.segments.last_seq(SessionId("again"))
    async with running_gateway(settings, services) as base:
        second = await stream_sample(session_url(base, "again"))
    assert first.finals
    assert second.finals
    assert second.finals[0]["seq"] == stored_after_first + 1
    assert stored_after_first >= first.finals[-1]["seq"]


async def test_pending_partial_is_finalised_on_disconnect(
    settings: Settings, services: Services
) -> None:
    received: list[dict[str, object]] = []
    async with running_gateway(settings, services) as base, connect(session_url(base, "cut")) as ws:
        for frame in speech_frames(trailing_silence=False):
            await ws.send(frame)
        # Read until the server goes quiet: it has then answered every frame.
        with contextlib.suppress(TimeoutError):
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 3.0)))
        await ws.close()
    # Leaving the block waited for the server to finish the stream.
    pending = received[-1]
    assert pending["type"] == "partial", "no partial was pending: the test would show nothing"
    stored = await services.stores.segments.segments(SessionId("cut"))
    assert stored[-1].seq == pending["seq"]
    # The final also holds what the tail of the audio added after the last partial.
    assert stored[-1].text.startswith(str(pending["text"]))
    assert await services.stores.partials.last_seq(SessionId("cut")) == stored[-1].seq


async def test_return_transcription_false_stores_but_sends_nothing(
    settings: Settings, services: Services
) -> None:
    quiet = settings.model_copy(update={"return_transcription": False})
    async with running_gateway(quiet, services) as base:
        result = await stream_sample(session_url(base, "quiet"))
    assert (result.partials, result.finals, result.errors) == ([], [], [])
    assert await services.stores.segments.segments(SessionId("quiet"))


async def test_text_frame_is_refused_with_1003_and_keeps_what_was_recognised(
    settings: Settings, services: Services
) -> None:
    async with running_gateway(settings, services) as base:
        received, code, _ = await until_closed(
            session_url(base, "texty"), [*speech_frames(), '{"type":"start"}']
        )
    assert code == 1003
    assert received[-1] == {
        "type": "error",
        "code": "text_frame_not_supported",
        "message": "text frames are not part of the protocol: send audio as binary frames",
        "retryable": False,
    }
    assert await services.stores.segments.segments(SessionId("texty"))


async def test_empty_frame_is_refused_with_1007(settings: Settings, services: Services) -> None:
    async with running_gateway(settings, services) as base:
        received, code, _ = await until_closed(session_url(base, "empty"), [b"\xd5" * 160, b""])
    assert code == 1007
    assert received[-1]["code"] == "invalid_audio"
    assert received[-1]["message"] == "empty audio frame"


async def test_odd_length_pcm16_frame_is_refused_with_1007(
    settings: Settings, services: Services
) -> None:
    pcm = settings.model_copy(update={"audio_codec": Codec.PCM16LE})
    async with running_gateway(pcm, services) as base:
        received, code, _ = await until_closed(
            session_url(base, "odd"), [b"\x00" * 320, b"\x00" * 321]
        )
    assert code == 1007
    assert received[-1]["message"] == (
        "pcm16le frame has 321 bytes; a whole number of 2-byte samples is required"
    )


async def test_oversized_frame_is_refused_with_1009_naming_the_limit(
    settings: Settings, services: Services
) -> None:
    small = settings.model_copy(update={"max_frame_bytes": 1000})
    async with running_gateway(small, services) as base:
        received, code, _ = await until_closed(session_url(base, "big"), [b"\xd5" * 1001])
    assert code == 1009
    assert received[-1]["code"] == "frame_too_large"
    assert received[-1]["message"] == "audio frame of 1001 bytes exceeds the limit of 1000 bytes"


@pytest.mark.parametrize(
    ("session_id", "why"),
    [("x" * 65, "65 characters long; at most 64"), ("bad%20id", "may hold only letters")],
)
async def test_invalid_session_id_is_refused_with_1008(
    settings: Settings, services: Services, session_id: str, why: str
) -> None:
    async with running_gateway(settings, services) as base:
        received, code, _ = await until_closed(session_url(base, session_id), [])
    assert code == 1008
    assert received[-1]["code"] == "invalid_session_id"
    assert why in str(received[-1]["message"])


async def test_token_is_required_when_the_session_has_one(
    settings: Settings, services: Services
) -> None:
    guarded = settings.model_copy(update={"access_token": SecretStr("s3cret")})
    async with running_gateway(guarded, services) as base:
        received, code, _ = await until_closed(session_url(base, "guarded"), [b"\xd5" * 160])
        by_header = await stream_sample(session_url(base, "guarded"), token="s3cret")
        by_query = await stream_sample(session_url(base, "guarded") + "?token=s3cret")
    assert code == 1008
    assert received[-1]["code"] == "unauthorized"
    assert by_header.finals
    assert by_header.close_code == 1000
    assert by_query.finals
    assert by_query.close_code == 1000


def _sample_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not exported")


async def test_health_and_metrics_are_served(settings: Settings, services: Services) -> None:
    import httpx

    before = prometheus_client.generate_latest().decode()
    async with running_gateway(settings, services) as base:
        http = base.replace("ws://", "http://")
        await stream_sample(session_url(base, "metered"))
        async with httpx.AsyncClient() as http_client:
            health = (await http_client.get(f"{http}/health")).json()
            served = await http_client.get(f"{http}/metrics")
        # The client may leave before its last frames are recognised: read once the gateway has
        # finished the stream (a shutdown would stop reading after a while).
        active = {"gateway": "g711", "engine": services.recognizer.name}
        for _ in range(600):
            if not prometheus_client.REGISTRY.get_sample_value("earshot_active_streams", active):
                break
            await asyncio.sleep(0.1)
    after = prometheus_client.generate_latest().decode()
    assert (health["status"], health["engine"], health["model_status"]) == (
        "ok",
        "paraformer",
        "loaded",
    )
    assert served.headers["content-type"].startswith("text/plain")
    assert 'earshot_frames_received_total{gateway="g711"}' in served.text
    # created at start, before any overload: the first burst is a rise rate() sees
    assert 'earshot_overload_rejections_total{engine="paraformer",gateway="g711"}' in served.text
    frames = speech_frames()

    def grew(series: str) -> float:
        return _sample_value(after, series) - (
            _sample_value(before, series) if series in before else 0.0
        )

    assert grew('earshot_frames_received_total{gateway="g711"}') == len(frames)
    assert grew('earshot_audio_bytes_received_total{gateway="g711"}') == sum(map(len, frames))
    assert grew('earshot_audio_seconds_received_total{gateway="g711"}') == pytest.approx(
        sum(map(len, frames)) / 8000
    )
    assert (
        grew('earshot_first_partial_latency_seconds_count{engine="paraformer",gateway="g711"}') >= 1
    )
    assert grew('earshot_final_latency_seconds_count{engine="paraformer",gateway="g711"}') >= 1
    assert grew('earshot_real_time_factor_count{engine="paraformer",gateway="g711"}') == len(frames)
    assert _sample_value(after, 'earshot_active_streams{engine="paraformer",gateway="g711"}') == 0
    assert "earshot_overload_rejections_total" in after


class GatedDecoder(WrappedDecoder):
    """The real Paraformer decoder behind a gate the test opens: inference stalls until then."""

    def __init__(self, inner: ParaformerDecoder) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def decode(self, streams: Sequence[ParaformerStream]) -> list[list[Recognition]]:
        self.entered.set()
        self.gate.wait()
        return self.inner.decode(streams)


async def test_overload_sends_the_error_then_closes_with_1013(
    settings: Settings, services: Services
) -> None:
    # One worker stalled on the first stream's chunk and a queue of two: the second stream's chunk
    # takes the last slot, the third waits 0.2 s for one and is refused.
    gated = GatedDecoder(paraformer.load_paraformer(settings))
    stalled = BatchingRecognizer(gated, workers=1, queue_size=2, queue_timeout=0.2)
    try:
        async with running_gateway(settings, Services(stalled, services.stores)) as base:
            try:
                async with (
                    connect(session_url(base, "a")) as a,
                    connect(session_url(base, "b")) as b,
                ):
                    await a.send(b"\xd5" * 160)
                    # The server handles each connection in its own task: without these waits the
                    # third chunk could take a slot before the second and the test would hang.
                    assert await asyncio.to_thread(gated.entered.wait, 10.0)
                    await b.send(b"\xd5" * 160)
                    await asyncio.sleep(0.3)
                    received, code, reason = await until_closed(
                        session_url(base, "c"), [b"\xd5" * 160]
                    )
                    gated.gate.set()
            finally:
                gated.gate.set()
    finally:
        await stalled.aclose()
    assert received == [
        {
            "type": "error",
            "code": "inference_overloaded",
            "message": "ASR inference is overloaded; retry later.",
            "retryable": True,
        }
    ]
    assert (code, reason) == (1013, "inference overloaded")


async def _steps_once_settled(recognizer: SteppingRecognizer[kyutai.KyutaiStream]) -> int:
    """The clock's step count once it has stepped and then stayed idle for 0.3 s."""
    last, still = -1, 0
    for _ in range(400):
        steps = recognizer.clock.stats.steps
        still = still + 1 if steps == last and steps else 0
        if still == 6:
            return steps
        last = steps
        await asyncio.sleep(0.05)
    raise AssertionError(f"the clock did not settle (steps: {last})")


async def test_a_kyutai_stream_beyond_the_batch_slots_is_refused_with_1013_at_once(
    settings: Settings, services: Services
) -> None:
    # One batch slot, taken by the first stream: the second stream's first chunk is refused at
    # once, not queued behind the first (the queue timeout is 2 s; the refusal comes before a step).
    options = kyutai.KyutaiOptions(max_streams=1, cuda_graphs=False)
    decoder = await asyncio.to_thread(
        kyutai.load_kyutai, model_dir=None, cache_dir=settings.cache_dir, options=options
    )
    recognizer = SteppingRecognizer(decoder)
    try:
        async with (
            running_gateway(settings, Services(recognizer, services.stores)) as base,
            connect(session_url(base, "a")) as a,
        ):
            await a.send(b"\xd5" * 1600)
            steps = await _steps_once_settled(recognizer)
            received, code, reason = await asyncio.wait_for(
                until_closed(session_url(base, "b"), [b"\xd5" * 160]), 10.0
            )
            # The first stream sends nothing more, so the clock has nothing to step: the
            # refusal waited for no step.
            assert recognizer.clock.stats.steps == steps
    finally:
        await recognizer.aclose()
    assert steps > 0
    assert received == [
        {
            "type": "error",
            "code": "inference_overloaded",
            "message": "ASR inference is overloaded; retry later.",
            "retryable": True,
        }
    ]
    assert (code, reason) == (1013, "inference overloaded")
