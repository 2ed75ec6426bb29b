"""The streaming Paraformer on a real tritonserver, through TritonRecognizer (issue 3).

One server for the module, serving ``paraformer_streaming`` from ``model-repo/`` on the tiny
random-weight model, and a copy of it that forgets a sequence idle for one second (to show what the
keepalive protects from). Expected texts come from the in-process ParaformerDecoder on the same
audio in the same chunks.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client import REGISTRY

from earshot.engines import paraformer, tiny_paraformer
from earshot.engines.recognizers import EngineError, Samples
from earshot.engines.triton import TritonRecognizer
from earshot.events import Recognition
from tests import triton_server

pytestmark = pytest.mark.integration

RATE = 16_000
CHUNK = 3_200  # 200 ms, a typical gateway chunk
SHORT_IDLE_MODEL = "paraformer_streaming_short_idle"


def syllables(seconds: float, *, pitch: float) -> Samples:
    """Speech-like audio: a buzzing voice at ``pitch`` Hz that swells and fades 4 times a second."""
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 20))
    return np.asarray(0.1 * voice * np.sin(4 * np.pi * t) ** 2, dtype=np.float32)


def utterance(pitch: float) -> Samples:
    """Two phrases with a pause between them: partials, a final at the pause, then more."""
    pause = np.zeros(2 * RATE, dtype=np.float32)
    return np.concatenate([syllables(2.0, pitch=pitch), pause, syllables(1.6, pitch=pitch * 1.5)])


def chunks(audio: Samples) -> list[Samples]:
    return [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tiny_paraformer.ParaformerFiles:
    return tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny-paraformer"))


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, model_files: tiny_paraformer.ParaformerFiles
) -> Iterator[triton_server.TritonServer]:
    """A running tritonserver; failing (never skipping) when it cannot be prepared."""
    workdir = tmp_path_factory.mktemp("triton")
    parameters = {"model_dir": str(model_files.encoder.parent)}
    models = [
        triton_server.ModelSpec("paraformer_streaming", parameters),
        triton_server.ModelSpec(
            "paraformer_streaming", parameters, name=SHORT_IDLE_MODEL,
            idle_timeout_microseconds=1_000_000,
        ),
    ]  # fmt: skip
    with triton_server.serving(workdir, models) as server:
        yield server


@pytest.fixture(scope="module")
def reference(model_files: tiny_paraformer.ParaformerFiles) -> paraformer.ParaformerDecoder:
    return paraformer.ParaformerDecoder(model_files)


def finals(said: list[Recognition]) -> list[str]:
    return [r.text for r in said if r.is_final]


@pytest.mark.asyncio
async def test_one_stream_through_triton_says_what_the_in_process_decoder_says(
    triton: triton_server.TritonServer, reference: paraformer.ParaformerDecoder
) -> None:
    pieces = chunks(utterance(120.0))
    expected = triton_server.in_process(reference, pieces)
    recognizer = TritonRecognizer(triton.grpc_url)
    try:
        said = await triton_server.recognised(recognizer, pieces)
    finally:
        await recognizer.aclose()

    assert len(finals(expected)) == 2
    assert said == expected


@pytest.mark.asyncio
async def test_sixteen_interleaved_streams_each_get_the_text_of_their_own_audio(
    triton: triton_server.TritonServer, reference: paraformer.ParaformerDecoder
) -> None:
    inputs = [chunks(utterance(90.0 + 17.0 * i)) for i in range(16)]
    expected = [triton_server.in_process(reference, pieces) for pieces in inputs]
    recognizer = TritonRecognizer(triton.grpc_url)
    try:
        said = await asyncio.gather(
            *(triton_server.recognised(recognizer, pieces) for pieces in inputs)
        )
    finally:
        await recognizer.aclose()

    assert len({tuple(finals(e)) for e in expected}) >= 12, "the inputs should differ in text"
    assert said == expected


@pytest.mark.asyncio
async def test_a_chunk_triton_gets_without_start_is_rejected_with_a_clear_engine_error(
    triton: triton_server.TritonServer,
) -> None:
    # Without keepalives the short-idle model forgets the sequence, so the next chunk reaches
    # Triton without START for a sequence it does not know.
    recognizer = TritonRecognizer(triton.grpc_url, model=SHORT_IDLE_MODEL, keepalive_seconds=3600)
    try:
        stream = recognizer.open_stream()
        await stream.accept(syllables(0.4, pitch=150.0))
        await asyncio.sleep(2.5)
        with pytest.raises(EngineError, match="must specify the START flag"):
            await stream.accept(syllables(0.4, pitch=150.0))
        await stream.finish()
    finally:
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_a_stream_idle_longer_than_the_keepalive_is_not_lost(
    triton: triton_server.TritonServer, reference: paraformer.ParaformerDecoder
) -> None:
    pieces = chunks(utterance(140.0))
    expected = triton_server.in_process(reference, pieces)
    recognizer = TritonRecognizer(triton.grpc_url, model=SHORT_IDLE_MODEL, keepalive_seconds=0.3)
    try:
        said = await triton_server.recognised(recognizer, pieces, pause_after=4, pause=3.0)
    finally:
        await recognizer.aclose()

    assert said == expected


@pytest.mark.asyncio
async def test_the_recogniser_recovers_when_triton_is_killed_and_restarted_mid_stream(
    triton: triton_server.TritonServer, reference: paraformer.ParaformerDecoder
) -> None:
    before, after = chunks(syllables(2.0, pitch=130.0)), chunks(utterance(170.0))
    lost_before = _audio_lost_seconds()
    recognizer = TritonRecognizer(triton.grpc_url)
    stream = recognizer.open_stream()
    try:
        heard_before = [r for piece in before for r in await stream.accept(piece)]
        await asyncio.to_thread(triton.stop, hard=True)
        waiting = asyncio.create_task(stream.accept(after[0]))
        await asyncio.to_thread(triton.start)
        restarted = time.monotonic()
        heard_after = await waiting
        recovery = time.monotonic() - restarted
        for piece in after[1:]:
            heard_after.extend(await stream.accept(piece))
        heard_after.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    print(f"before the kill: {heard_before}\nafter the restart ({recovery:.2f} s): {heard_after}")
    partial_before = [r.text for r in heard_before if not r.is_final][-1]
    assert recovery < 5.0
    # The partial heard before the kill is kept as a final; the new sequence hears the rest.
    assert heard_after[0] == Recognition(partial_before, is_final=True)
    assert heard_after[1:] == triton_server.in_process(reference, after)
    assert _audio_lost_seconds() - lost_before == pytest.approx(2.0, abs=0.25)


def _audio_lost_seconds() -> float:
    value = REGISTRY.get_sample_value(
        "earshot_triton_audio_lost_seconds_total", {"model": "paraformer_streaming"}
    )
    return value or 0.0


@pytest.mark.asyncio
async def test_triton_metrics_count_inferences_and_the_round_trip_is_measured(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url)
    try:
        await triton_server.recognised(recognizer, chunks(syllables(1.0, pitch=125.0)))
    finally:
        await recognizer.aclose()

    metrics = triton.metrics()
    count = triton_server.metric_total(metrics, "nv_inference_count", model="paraformer_streaming")
    executions = triton_server.metric_total(
        metrics, "nv_inference_exec_count", model="paraformer_streaming"
    )
    assert count >= 6
    assert 0 < executions <= count
    round_trips = REGISTRY.get_sample_value(
        "earshot_triton_round_trip_seconds_count", {"model": "paraformer_streaming"}
    )
    assert round_trips is not None
    assert round_trips >= 6


def test_model_parameters_in_the_repository_copy_point_at_the_tiny_model(
    triton: triton_server.TritonServer, model_files: tiny_paraformer.ParaformerFiles
) -> None:
    config = (triton.model_repository / "paraformer_streaming" / "config.pbtxt").read_text()

    assert f'string_value: "{model_files.encoder.parent}"' in config
    assert config.count('key: "model_dir"') == 1
    assert Path(triton.model_repository / SHORT_IDLE_MODEL / "1" / "model.py").exists()


def test_the_backend_environment_holds_the_constrained_releases_with_numpy_below_2(
    triton: triton_server.TritonServer,
) -> None:
    # the server above runs its models in this environment: the pins are the ones that served
    pins: dict[str, str] = {}
    for line in triton_server.BACKEND_CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    (site_packages,) = (triton_server.prepare().python_env / "lib").glob("python3*/site-packages")
    installed: dict[str, Version] = {
        canonicalize_name(dist.metadata["Name"]): Version(dist.version)
        for dist in metadata.distributions(path=[str(site_packages)])
    }
    assert Version("1") <= installed["numpy"] < Version("2")
    # pip and setuptools come with the venv (ensurepip), not from the install that is constrained
    seeded = {"pip", "setuptools"}
    constrained = {n: v for n, v in installed.items() if n in pins and n not in seeded}
    assert len(constrained) >= 10, sorted(installed)  # sherpa-onnx, soxr, grpcio, ...
    assert {n: str(v) for n, v in constrained.items() if v.public != pins[n]} == {}
