"""The telephony gateway end to end over Triton: WebSocket in, partials and finals out, segments stored.

The gateway is the real one (uvicorn, embedded stores) with a TritonRecognizer as its engine; the
tritonserver serves ``paraformer_streaming`` on the same tiny model the in-process engine loads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.engines import loading, paraformer
from earshot.engines.triton import TritonRecognizer
from earshot.events import SessionId
from earshot.gateways.g711 import client, messages
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests import triton_server
from tests.gateway import running_gateway, session_url

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

FRAME_SECONDS = 0.02
# Sent as fast as possible, the sample takes Triton a few seconds (a round trip per chunk): the
# client must wait that long for the last final before it leaves.
LINGER_SECONDS = 30.0


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton_server.TritonServer]:
    """A running tritonserver; failing (never skipping) when it cannot be prepared."""
    workdir = tmp_path_factory.mktemp("triton-gateway")
    files = paraformer.cached_tiny_paraformer(workdir / "cache")
    spec = triton_server.ModelSpec("paraformer_streaming", {"model_dir": str(files.encoder.parent)})
    with triton_server.serving(workdir, [spec]) as server:
        yield server


@pytest_asyncio.fixture
async def over_triton(
    settings: Settings, services: Services, triton: triton_server.TritonServer
) -> AsyncIterator[Services]:
    """The same stores, with the engine the settings select when ``triton_url`` is set."""
    recognizer = await loading.open_recognizer(
        settings.model_copy(update={"triton_url": triton.grpc_url})
    )
    assert isinstance(recognizer, TritonRecognizer)
    yield Services(recognizer, services.stores)
    await recognizer.aclose()


def speech_frames(*, speech_repeats: int = 1) -> list[bytes]:
    audio = demoing.sample_audio() * speech_repeats
    audio = streaming.with_trailing_silence(audio, Codec.ALAW, 8000)
    return client.frames_of(audio, codec=Codec.ALAW, rate=8000, frame_ms=20)


async def test_the_gateway_over_triton_sends_and_stores_what_it_does_in_process(
    settings: Settings, services: Services, over_triton: Services
) -> None:
    async with running_gateway(settings, services) as base:
        local = await client.stream(
            session_url(base, "local"), speech_frames(), frame_seconds=FRAME_SECONDS, speed=0,
            linger=LINGER_SECONDS,
        )  # fmt: skip
    async with running_gateway(settings, over_triton) as base:
        remote = await client.stream(
            session_url(base, "remote"), speech_frames(), frame_seconds=FRAME_SECONDS, speed=0,
            linger=LINGER_SECONDS,
        )  # fmt: skip

    assert local.finals
    assert remote.errors == []
    assert remote.partials
    assert remote.finals
    stored_local = await services.stores.segments.segments(SessionId("local"))
    stored_remote = await services.stores.segments.segments(SessionId("remote"))
    assert [s.text for s in stored_remote] == [s.text for s in stored_local]
    # The client lingers until the last answer is a final: Triton's answers to the last chunks,
    # which come after the gateway's last call with audio, still reach it before it leaves.
    assert [(s.seq, s.text) for s in stored_remote] == [
        (f["seq"], f["text"]) for f in remote.finals
    ]


async def test_the_websocket_stays_open_and_recognition_resumes_when_triton_restarts(
    settings: Settings, over_triton: Services, triton: triton_server.TritonServer
) -> None:
    heard: list[tuple[float, messages.ServerMessage]] = []
    async with running_gateway(settings, over_triton) as base:
        streaming_task = asyncio.create_task(
            client.stream(
                session_url(base, "restart"), speech_frames(speech_repeats=2),
                frame_seconds=FRAME_SECONDS, speed=2.0, linger=5.0,
                on_message=lambda m: heard.append((time.monotonic(), m)),
            )
        )  # fmt: skip
        await asyncio.sleep(3.0)
        await asyncio.to_thread(triton.stop, hard=True)
        killed = time.monotonic()
        await asyncio.to_thread(triton.start)
        restarted = time.monotonic()
        result = await streaming_task

    before = [m for t, m in heard if t < killed]
    after = [m for t, m in heard if t > restarted]
    print(
        f"before the kill: {before}\nafter the restart ({restarted - killed:.1f} s down): {after}"
    )
    assert result.errors == []
    assert result.close_code in (None, 1000)
    partial_seqs_before = [m["seq"] for m in before if m["type"] == "partial"]
    assert partial_seqs_before
    assert any(m["type"] == "final" for m in after)
    # The segment open at the kill is finalised (with what was heard of it), not dropped.
    assert partial_seqs_before[-1] in {f["seq"] for f in result.finals}
    # Segment numbers go on without a gap across the restart.
    assert [f["seq"] for f in result.finals] == list(range(1, len(result.finals) + 1))
    recovery = min(t for t, _ in heard if t > restarted) - restarted
    assert recovery < 5.0
