"""TritonRecognizer pipelines a stream's requests: the next chunk never waits for earlier answers.

A real tritonserver serves ``tests/triton_models/late_answer``, a model that answers a chunk of a
sequence only when the sequence's next chunk (or its END) arrives, with the number of samples the
sequence has heard so far (a partial; the END's answer is a final). A client that waited for each
chunk's answer before sending the next would wait for ever; these tests show that every answer
still comes back, once and in order, across several streams, a broken link and a timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from earshot.engines.recognizers import EngineError, Samples
from earshot.engines.triton import MAX_IN_FLIGHT, TritonRecognizer
from earshot.events import Recognition
from earshot.gateways.lagging import RemoteBacklogged
from tests import triton_server

pytestmark = pytest.mark.integration

MODEL = "late_answer"
RATE = 16_000


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton_server.TritonServer]:
    """A running tritonserver; failing (never skipping) when it cannot be prepared."""
    workdir = tmp_path_factory.mktemp("triton-late-answer")
    spec = triton_server.ModelSpec(MODEL, {}, root=triton_server.TEST_MODELS)
    with triton_server.serving(workdir, [spec]) as server:
        yield server


def silence(samples: int) -> Samples:
    return np.zeros(samples, dtype=np.float32)


def counted(sizes: list[int]) -> list[Recognition]:
    """What late_answer says about chunks of these sizes, then END: a partial per chunk, a final."""
    totals = [str(total) for total in np.cumsum(sizes)]
    return [Recognition(t, is_final=False) for t in totals] + [Recognition(totals[-1], True)]


async def sent_and_finished(recognizer: TritonRecognizer, sizes: list[int]) -> list[Recognition]:
    stream = recognizer.open_stream()
    said: list[Recognition] = []
    try:
        for size in sizes:
            said.extend(await stream.accept(silence(size)))
    finally:
        said.extend(await stream.finish())
    return said


@pytest.mark.asyncio
async def test_a_streams_next_chunk_goes_out_before_the_previous_chunk_is_answered(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=10.0)
    stream = recognizer.open_stream()
    sizes = [1600, 800, 2400, 3200]
    try:
        said = await stream.accept(silence(sizes[0]))
        said.extend(await stream.accept(silence(sizes[1])))
        # The model answers the second chunk only once the third reaches it.
        assert (stream.sent_chunks, stream.answered_chunks) == (2, 1)
        for size in sizes[2:]:
            said.extend(await stream.accept(silence(size)))
        said.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    assert said == counted(sizes)
    assert stream.sent_chunks == stream.answered_chunks == len(sizes) + 1  # and the END


@pytest.mark.asyncio
async def test_each_answer_carries_when_its_own_chunk_was_handed_over_also_when_returned_later(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=10.0)
    stream = recognizer.open_stream()
    sizes = [1600, 800, 2400, 3200]
    calls: list[tuple[float, float]] = []  # (called, returned) of each accept, then of finish
    returned: list[list[Recognition]] = []  # what each call returned
    try:
        for size in sizes:
            called = time.perf_counter()
            returned.append(await stream.accept(silence(size)))
            calls.append((called, time.perf_counter()))
    finally:
        called = time.perf_counter()
        returned.append(await stream.finish())
        calls.append((called, time.perf_counter()))
        await recognizer.aclose()

    said = [recognition for answers in returned for recognition in answers]
    assert said == counted(sizes)
    # The i-th partial answers the i-th chunk, the final the END (handed over by finish).
    answered_by = [i for i, answers in enumerate(returned) for _ in answers]
    late = 0
    for chunk, (recognition, call) in enumerate(zip(said, answered_by, strict=True)):
        assert recognition.heard is not None
        assert calls[chunk][0] <= recognition.heard <= calls[chunk][1], (chunk, call)
        late += call > chunk
    assert late >= len(sizes) - 1  # late_answer answers a chunk once the next one arrives


@pytest.mark.asyncio
async def test_the_answers_of_interleaved_pipelined_streams_come_back_once_and_in_order(
    triton: triton_server.TritonServer,
) -> None:
    # At least 40 ms each: the client sends Paraformer's audio as 40 ms requests (not gathered here).
    inputs = [[640 + 160 * i + 16 * k for k in range(12)] for i in range(8)]
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=10.0)
    try:
        said = await asyncio.gather(*(sent_and_finished(recognizer, sizes) for sizes in inputs))
    finally:
        await recognizer.aclose()

    assert said == [counted(sizes) for sizes in inputs]


@pytest.mark.asyncio
async def test_a_stream_with_too_many_chunks_unanswered_waits_for_the_oldest(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=20.0)
    stream = recognizer.open_stream()
    sizes = [1600] + [800] * (MAX_IN_FLIGHT + 1)
    try:
        said = await stream.accept(silence(sizes[0]))  # a START waits for its answer: none out
        os.kill(triton.pid, signal.SIGSTOP)  # Triton stops answering
        stopped = time.monotonic()
        try:
            for size in sizes[1:-1]:  # up to MAX_IN_FLIGHT out: each call returns after its wait
                said.extend(await asyncio.wait_for(stream.accept(silence(size)), 2.0))
            assert stream.sent_chunks - stream.answered_chunks == MAX_IN_FLIGHT
            one_more = asyncio.create_task(stream.accept(silence(sizes[-1])))
            await asyncio.sleep(1.0)
            assert not one_more.done()  # held up until Triton answers the oldest
            # and a gateway sees Triton falling behind: the oldest request's age
            assert isinstance(recognizer, RemoteBacklogged)
            assert recognizer.remote_backlog_seconds() >= time.monotonic() - stopped - 0.1
        finally:
            os.kill(triton.pid, signal.SIGCONT)
        said.extend(await asyncio.wait_for(one_more, 10.0))
        assert stream.sent_chunks - stream.answered_chunks <= MAX_IN_FLIGHT
        # Answered now, but the caller was held about a second beyond its 50 ms of audio.
        assert stream.held_behind_seconds >= 0.9
        assert recognizer.remote_backlog_seconds() >= 0.9
        held = stream.held_behind_seconds
        await asyncio.sleep(0.5)  # a caller sending nothing is held by nobody
        assert stream.held_behind_seconds <= held - 0.45
        said.extend(await stream.finish())
        assert recognizer.remote_backlog_seconds() == 0.0
    finally:
        await recognizer.aclose()

    assert said == counted(sizes)


@pytest.mark.asyncio
async def test_a_caller_at_real_time_on_a_triton_that_keeps_up_is_held_behind_by_nothing(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=20.0)
    stream = recognizer.open_stream()
    try:
        os.kill(triton.pid, signal.SIGSTOP)  # the START's answer comes half a second late
        opening = asyncio.create_task(stream.accept(silence(640)))
        await asyncio.sleep(0.5)
        os.kill(triton.pid, signal.SIGCONT)
        await asyncio.wait_for(opening, 10.0)
        assert stream.held_behind_seconds == 0.0  # a START waits by design, not by back pressure
        start = time.monotonic()
        for index in range(1, 26):  # a second of 40 ms chunks, each sent on time
            await asyncio.sleep(max(0.0, start + index * 0.04 - time.monotonic()))
            await stream.accept(silence(640))
            # each call waits at most half its chunk for answers: nothing accumulates (a call that
            # ran late counts, but far under the gateways' 0.5 s limit)
            assert stream.held_behind_seconds <= 0.2, index
        assert recognizer.remote_backlog_seconds() <= 0.2
    finally:
        os.kill(triton.pid, signal.SIGCONT)
        await stream.finish()
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_answers_that_come_after_the_last_call_are_collected_without_sending_audio(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=20.0)
    stream = recognizer.open_stream()
    sizes = [1600, 800, 2400]
    try:
        said = await stream.accept(silence(sizes[0]))  # START: answered within the call
        said.extend(await stream.accept(silence(sizes[1])))  # answered when the next arrives
        assert stream.unanswered
        os.kill(triton.pid, signal.SIGSTOP)  # the second chunk's answer comes after this call
        try:
            await asyncio.sleep(0.1)  # the stop takes hold
            said.extend(await stream.accept(silence(sizes[2])))
            assert (stream.sent_chunks, stream.answered_chunks) == (3, 1)
        finally:
            os.kill(triton.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10.0
        while stream.answered_chunks < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            said.extend(await stream.collect())
        assert stream.sent_chunks == 3  # nothing was sent to get it
        assert said == counted(sizes)[:2]
        assert stream.unanswered  # the third chunk's answer waits for a chunk that never comes
        said.extend(await stream.finish())
        assert not stream.unanswered
    finally:
        await recognizer.aclose()

    assert said == counted(sizes)


@pytest.mark.asyncio
async def test_an_answer_that_comes_between_calls_is_announced_to_the_listener_at_once(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=20.0)
    stream = recognizer.open_stream()
    told = asyncio.Event()
    ready_when_told: list[bool] = []

    def listener() -> None:
        ready_when_told.append(stream.ready)
        told.set()

    stream.on_answer(listener)
    sizes = [1600, 800, 2400]
    try:
        said = await stream.accept(silence(sizes[0]))
        said.extend(await stream.accept(silence(sizes[1])))  # answers the first chunk
        assert not told.is_set()  # the calls returned their answers themselves
        os.kill(triton.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.1)  # the stop takes hold
            said.extend(await stream.accept(silence(sizes[2])))  # answers the second: not yet
            assert (stream.answered_chunks, stream.ready) == (1, False)
        finally:
            os.kill(triton.pid, signal.SIGCONT)
        async with asyncio.timeout(10.0):
            await told.wait()  # no call runs: the listener is told as the answer comes
        assert ready_when_told == [True]
        said.extend(await stream.collect())
        assert (stream.sent_chunks, stream.answered_chunks, stream.ready) == (3, 2, False)
        assert said == counted(sizes)[:2]
        said.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    assert said == counted(sizes)
    assert ready_when_told == [True]  # told once: finish returned the last answers itself


@pytest.mark.asyncio
async def test_a_link_broken_mid_pipeline_resends_the_unanswered_chunks_on_a_new_sequence(
    triton: triton_server.TritonServer,
) -> None:
    before, after = [1600, 800, 2400], 3200
    lost_before = _audio_lost_seconds()
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL)
    stream = recognizer.open_stream()
    try:
        heard = [r for size in before for r in await stream.accept(silence(size))]
        # The last chunk cannot have been answered: its answer waits for the next chunk.
        await asyncio.to_thread(triton.stop, hard=True)
        waiting = asyncio.create_task(stream.accept(silence(after)))
        await asyncio.to_thread(triton.start)
        heard.extend(await asyncio.wait_for(waiting, 10.0))
        heard.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    print(f"heard across the restart: {heard}")
    (kept, new_final) = [r for r in heard if r.is_final]
    answered_before = int(kept.text)
    # The old sequence's last partial is kept as a final; the new sequence heard all the rest.
    assert heard[heard.index(kept) - 1] == Recognition(kept.text, is_final=False)
    assert answered_before + int(new_final.text) == sum(before) + after
    assert int(new_final.text) >= before[-1] + after
    assert heard[-1] == new_final
    assert _audio_lost_seconds() - lost_before == pytest.approx(answered_before / RATE)
    assert stream.answered_chunks == stream.sent_chunks == len(before) + 2


@pytest.mark.asyncio
async def test_a_chunk_left_unanswered_past_the_request_timeout_fails_the_stream(
    triton: triton_server.TritonServer,
) -> None:
    recognizer = TritonRecognizer(triton.grpc_url, model=MODEL, request_timeout_seconds=0.5)
    stream = recognizer.open_stream()
    try:
        said = await stream.accept(silence(1600))
        said.extend(await stream.accept(silence(800)))  # answered only when another chunk comes
        await asyncio.sleep(1.0)
        with pytest.raises(EngineError, match="did not answer a chunk"):
            await stream.accept(silence(800))
        with pytest.raises(EngineError, match="did not answer a chunk"):
            await stream.accept(silence(800))
        said.extend(await stream.finish())
    finally:
        await recognizer.aclose()

    # What the stream had heard before stays: its last partial becomes a final.
    assert said == [Recognition("1600", is_final=False), Recognition("1600", is_final=True)]


def _audio_lost_seconds() -> float:
    value = REGISTRY.get_sample_value("earshot_triton_audio_lost_seconds_total", {"model": MODEL})
    return value or 0.0
