"""Kyutai STT on a real tritonserver (its CPU config, the tiny model), through TritonRecognizer.

The same checks as for the Paraformer (test_triton_paraformer.py): the in-process KyutaiDecoder on
the same checkpoint, fed the same chunks with the same torch thread count, says what Triton says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from earshot.engines import kyutai, tiny_kyutai
from earshot.engines.recognizers import EngineError, EngineOverloaded, Samples
from earshot.engines.triton import TritonRecognizer
from tests import triton_server

pytestmark = pytest.mark.integration

RATE = kyutai.SAMPLE_RATE
CHUNK = 4_800  # 200 ms
MODEL = "kyutai_stt"
SHORT_IDLE_MODEL = "kyutai_stt_short_idle"
TWO_INSTANCES_MODEL = "kyutai_stt_two_instances"  # two instances of one batch slot each
SLOTS = 16  # max_streams of model-repo/kyutai_stt/configs/cpu.pbtxt


def talk(seed: int) -> Samples:
    """Two bursts of noise (the tiny model hears it as speech) around a pause that ends a segment."""
    rng = np.random.default_rng(seed)
    burst = 0.1 * rng.standard_normal(round(0.8 * RATE))
    pause = np.zeros(round(2.4 * RATE))
    return np.concatenate([burst, pause, burst[: round(0.6 * RATE)]]).astype(np.float32)


def chunks(audio: Samples) -> list[Samples]:
    return [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_kyutai.ensure_tiny_checkpoint(tmp_path_factory.mktemp("tiny-kyutai"))


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: Path
) -> Iterator[triton_server.TritonServer]:
    """A running tritonserver with the CPU config; failing (never skipping) when it cannot start."""
    workdir = tmp_path_factory.mktemp("triton-kyutai")
    parameters = {"model_dir": str(checkpoint)}
    models = [
        triton_server.ModelSpec(MODEL, parameters),
        triton_server.ModelSpec(
            MODEL, parameters, name=SHORT_IDLE_MODEL, idle_timeout_microseconds=1_000_000
        ),
        triton_server.ModelSpec(
            MODEL, {**parameters, "max_streams": "1"}, name=TWO_INSTANCES_MODEL, instances=2
        ),
    ]
    with triton_server.serving(
        workdir, models, engines=triton_server.ENGINES, config_name="cpu"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Iterator[kyutai.KyutaiDecoder]:
    torch.set_num_threads(1)  # as num_threads in the CPU config: the same arithmetic
    options = kyutai.KyutaiOptions(max_streams=SLOTS, cuda_graphs=False)
    decoder = kyutai.load_kyutai(
        model_dir=checkpoint, cache_dir=checkpoint, device="cpu", options=options
    )
    yield decoder
    decoder.close()


@pytest.mark.asyncio
async def test_one_stream_through_triton_says_what_the_in_process_kyutai_says(
    triton: triton_server.TritonServer, reference: kyutai.KyutaiDecoder
) -> None:
    pieces = chunks(talk(1))
    expected = triton_server.in_process(reference, pieces)
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    try:
        said = await triton_server.recognised(recognizer, pieces)
    finally:
        await recognizer.aclose()

    assert recognizer.sample_rate == RATE
    assert any(r.is_final for r in expected)
    assert triton_server.thinned(said, expected)


@pytest.mark.asyncio
async def test_sixteen_interleaved_kyutai_streams_each_get_the_text_of_their_own_audio(
    triton: triton_server.TritonServer, reference: kyutai.KyutaiDecoder
) -> None:
    inputs = [chunks(talk(10 + i)) for i in range(SLOTS)]
    expected = [triton_server.in_process(reference, pieces) for pieces in inputs]
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    try:
        said = await asyncio.gather(*(triton_server.recognised(recognizer, p) for p in inputs))
    finally:
        await recognizer.aclose()

    assert len({tuple(r.text for r in e) for e in expected}) >= 12, "inputs should differ in text"
    assert all(map(triton_server.thinned, said, expected))


@pytest.mark.asyncio
async def test_twenty_ms_chunks_reach_triton_once_per_frame_and_say_what_the_in_process_kyutai_says(
    triton: triton_server.TritonServer, reference: kyutai.KyutaiDecoder
) -> None:
    audio = talk(3)
    twenty_ms = kyutai.FRAME_SAMPLES // 4
    pieces = [audio[i : i + twenty_ms] for i in range(0, len(audio), twenty_ms)]
    expected = triton_server.in_process(reference, pieces)
    before = triton_server.metric_total(
        triton.metrics(), "nv_inference_request_success", model=MODEL
    )
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    try:
        said = await triton_server.recognised(recognizer, pieces)
    finally:
        await recognizer.aclose()
    requests = (
        triton_server.metric_total(triton.metrics(), "nv_inference_request_success", model=MODEL)
        - before
    )

    assert any(r.is_final for r in expected)
    assert triton_server.thinned(said, expected)
    # The first chunk (START), one request per 80 ms frame after it, and the END: not one per chunk.
    assert requests == 2 + len(audio) // kyutai.FRAME_SAMPLES
    assert len(pieces) > 3 * requests


@pytest.mark.asyncio
async def test_a_kyutai_chunk_without_start_is_rejected_with_a_clear_engine_error(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(
        triton.grpc_url, engine="kyutai", model=SHORT_IDLE_MODEL, keepalive_seconds=3600
    )
    try:
        stream = recognizer.open_stream()
        await stream.accept(talk(3)[:CHUNK])
        await asyncio.sleep(2.5)
        with pytest.raises(EngineError, match="must specify the START flag"):
            await stream.accept(talk(3)[:CHUNK])
        await stream.finish()
    finally:
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_an_idle_kyutai_stream_longer_than_the_keepalive_is_not_lost(
    triton: triton_server.TritonServer, reference: kyutai.KyutaiDecoder
) -> None:
    pieces = chunks(talk(4))
    expected = triton_server.in_process(reference, pieces)
    recognizer = TritonRecognizer(
        triton.grpc_url, engine="kyutai", model=SHORT_IDLE_MODEL, keepalive_seconds=0.3
    )
    try:
        said = await triton_server.recognised(recognizer, pieces, pause_after=2, pause=3.0)
    finally:
        await recognizer.aclose()

    assert triton_server.thinned(said, expected)


@pytest.mark.asyncio
async def test_kyutai_recognition_goes_on_after_triton_is_killed_and_restarted(
    triton: triton_server.TritonServer, reference: kyutai.KyutaiDecoder
) -> None:
    after = chunks(talk(5))
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    stream = recognizer.open_stream()
    try:
        await stream.accept(talk(6)[: 4 * CHUNK])
        await asyncio.to_thread(triton.stop, hard=True)
        waiting = asyncio.create_task(stream.accept(after[0]))
        await asyncio.to_thread(triton.start)
        heard = await asyncio.wait_for(waiting, 10.0)
        for piece in after[1:]:
            heard.extend(await stream.accept(piece))
        heard.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    expected = triton_server.in_process(reference, after)
    # The lost sequence's partial, kept as a final, then what the new sequence heard.
    assert any(triton_server.thinned(heard[i:], expected) for i in range(len(heard)))


@pytest.mark.asyncio
async def test_a_stream_beyond_the_models_batch_slots_is_refused_as_overloaded_and_may_retry(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    streams = [recognizer.open_stream() for _ in range(SLOTS + 1)]
    try:
        for stream in streams[:SLOTS]:
            await stream.accept(talk(7)[:CHUNK])
        with pytest.raises(EngineOverloaded, match="slots"):
            await streams[SLOTS].accept(talk(7)[:CHUNK])
        await streams[0].finish()
        await streams[SLOTS].accept(talk(7)[:CHUNK])
    finally:
        for stream in streams[1:]:
            await stream.finish()
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_a_stream_is_refused_only_once_the_slots_of_every_instance_are_taken(
    triton: triton_server.TritonServer,
) -> None:
    # Triton's sequence batcher gives a new sequence a free batcher slot of either instance; each
    # instance's decoder has one slot here. Were both streams put on one instance, the second would
    # be refused while the other instance stood idle.
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai", model=TWO_INSTANCES_MODEL)
    streams = [recognizer.open_stream() for _ in range(4)]
    try:
        for stream in streams[:2]:
            await asyncio.wait_for(stream.accept(talk(9)[:CHUNK]), 10.0)
        # refused while both slots are held: not queued until one frees (the guard only ends a hang)
        with pytest.raises(EngineOverloaded, match="slots"):
            await asyncio.wait_for(streams[2].accept(talk(9)[:CHUNK]), 10.0)
        await streams[1].finish()  # a slot of one instance frees, whichever it is
        await asyncio.wait_for(streams[3].accept(talk(9)[:CHUNK]), 10.0)
    finally:
        for stream in (streams[0], *streams[2:]):
            await stream.finish()
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_refused_sequences_are_ended_so_refusals_stay_immediate_and_a_freed_slot_admits(
    triton: triton_server.TritonServer,
) -> None:
    # Triton holds a sequence from its START until END: were refused STARTs not ended, they would
    # fill the batcher's 64 candidate sequences and later STARTs would wait in its backlog.
    recognizer = TritonRecognizer(triton.grpc_url, engine="kyutai")
    streams = [recognizer.open_stream() for _ in range(SLOTS + 1)]
    refusals = 0
    try:
        for stream in streams[:SLOTS]:
            await stream.accept(talk(8)[:CHUNK])
        for _ in range(2 * 64):
            with pytest.raises(EngineOverloaded, match="slots"):
                await asyncio.wait_for(streams[SLOTS].accept(talk(8)[:CHUNK]), 10.0)
            refusals += 1
        await streams[0].finish()
        await asyncio.wait_for(streams[SLOTS].accept(talk(8)[:CHUNK]), 10.0)
    finally:
        for stream in streams[1:]:
            await stream.finish()
        await recognizer.aclose()
    assert refusals == 2 * 64
