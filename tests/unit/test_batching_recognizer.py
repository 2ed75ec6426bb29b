"""BatchingRecognizer: worker threads, batches, the bounded queue, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from earshot.engines import paraformer, tiny_paraformer
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import (
    BatchDecoder,
    EngineError,
    EngineOverloaded,
    Recognizer,
    Samples,
)
from earshot.events import Recognition
from earshot.settings import Settings

pytestmark = pytest.mark.asyncio

RATE = 16_000
CHUNK = 3_200


def syllables(seconds: float, *, pitch: float = 120.0) -> Samples:
    """Speech-like audio: a buzzing voice at ``pitch`` Hz that swells and fades 4 times a second."""
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 20))
    return (0.1 * voice * np.sin(4 * np.pi * t) ** 2).astype(np.float32)


def chunk(marker: float) -> Samples:
    return np.full(160, marker, dtype=np.float32)


@dataclass(eq=False)
class FakeStream:
    chunks: list[float] = field(default_factory=list)
    finished: bool = False
    busy: bool = False


class FakeDecoder:
    """Records what it is fed; can hold its workers inside decode() and spot overlapping use."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, blocked: bool = False) -> None:
        self.loop = loop
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        self.entered: asyncio.Future[None] = loop.create_future()
        self.fed: list[float] = []
        self.overlaps = 0
        self.batch_sizes: list[int] = []

    @property
    def name(self) -> str:
        return "fake"

    @property
    def sample_rate(self) -> int:
        return RATE

    def open(self) -> FakeStream:
        return FakeStream()

    def accept(self, stream: FakeStream, samples: Samples) -> None:
        if np.isnan(samples[0]):
            raise ValueError("not a number")
        stream.chunks.append(float(samples[0]))
        self.fed.append(float(samples[0]))

    def finish(self, stream: FakeStream) -> None:
        stream.finished = True

    def decode(self, streams: Sequence[FakeStream]) -> list[list[Recognition]]:
        if not self.entered.done():
            self.loop.call_soon_threadsafe(_set_once, self.entered)
        self.release.wait()
        self.batch_sizes.append(len(streams))
        for stream in streams:
            self.overlaps += stream.busy
            stream.busy = True
        time.sleep(0.001)
        for stream in streams:
            stream.busy = False
        return [[Recognition(text=f"{len(s.chunks)} chunks", is_final=s.finished)] for s in streams]


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@asynccontextmanager
async def running(
    decoder: BatchDecoder[Any], **options: Any
) -> AsyncIterator[BatchingRecognizer[Any]]:
    recognizer = BatchingRecognizer(decoder, **options)
    try:
        yield recognizer
    finally:
        await recognizer.aclose()


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("earshot-")]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tiny_paraformer.ParaformerFiles:
    return tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"))


def decode_sequentially(
    decoder: paraformer.ParaformerDecoder, audio: Samples
) -> list[list[Recognition]]:
    stream = decoder.open()
    said = []
    for start in range(0, len(audio), CHUNK):
        decoder.accept(stream, audio[start : start + CHUNK])
        said.append(decoder.decode([stream])[0])
    decoder.finish(stream)
    return [*said, decoder.decode([stream])[0]]


async def recognise(recognizer: Recognizer, audio: Samples) -> list[list[Recognition]]:
    stream = recognizer.open_stream()
    said = [await stream.accept(audio[s : s + CHUNK]) for s in range(0, len(audio), CHUNK)]
    return [*said, await stream.finish()]


async def test_many_concurrent_streams_get_the_results_of_decoding_each_alone(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    decoder = paraformer.ParaformerDecoder(model)
    audios = [syllables(1.0 + i / 10, pitch=90.0 + 15 * i) for i in range(12)]
    expected = [decode_sequentially(decoder, a) for a in audios]

    async with running(decoder, workers=2, max_batch=4) as recognizer:
        got = await asyncio.gather(*(recognise(recognizer, a) for a in audios))

    assert got == expected
    assert len({str(e) for e in expected}) == len(audios)


async def test_a_full_queue_rejects_audio_without_losing_any() -> None:
    decoder = FakeDecoder(asyncio.get_running_loop(), blocked=True)
    async with running(decoder, workers=1, queue_size=2, queue_timeout=0.05) as recognizer:
        first, second, third = (recognizer.open_stream() for _ in range(3))
        on_worker = asyncio.create_task(first.accept(chunk(1)))
        await decoder.entered
        waiting = asyncio.create_task(second.accept(chunk(2)))
        await asyncio.sleep(0)

        with pytest.raises(EngineOverloaded, match=r"stayed full for 0\.05 s"):
            await third.accept(chunk(3))
        ending = asyncio.create_task(third.finish())  # an end never waits for a slot
        decoder.release.set()

        assert await on_worker == [Recognition("1 chunks", is_final=False)]
        assert await waiting == [Recognition("1 chunks", is_final=False)]
        assert await ending == [Recognition("0 chunks", is_final=True)]
        assert await second.accept(chunk(3)) == [Recognition("2 chunks", is_final=False)]
    assert decoder.fed == [1, 2, 3]


async def test_a_stream_never_decodes_on_two_threads_at_once() -> None:
    decoder = FakeDecoder(asyncio.get_running_loop())
    async with running(decoder, workers=4) as recognizer:
        streams = [recognizer.open_stream() for _ in range(3)]
        await asyncio.gather(*(s.accept(chunk(i)) for i in range(40) for s in streams))

    assert decoder.overlaps == 0
    assert sorted(decoder.fed) == sorted(float(i) for i in range(40) for _ in streams)


async def test_streams_waiting_together_are_decoded_in_one_batch() -> None:
    decoder = FakeDecoder(asyncio.get_running_loop(), blocked=True)
    async with running(decoder, workers=1, max_batch=3) as recognizer:
        blocker = asyncio.create_task(recognizer.open_stream().accept(chunk(0)))
        await decoder.entered
        streams = [recognizer.open_stream() for _ in range(5)]
        calls = [asyncio.create_task(s.accept(chunk(1))) for s in streams]
        await asyncio.sleep(0)
        decoder.release.set()
        await asyncio.gather(blocker, *calls)

    assert decoder.batch_sizes == [1, 3, 2]


async def test_a_decoder_failure_reaches_its_caller_as_an_engine_error() -> None:
    decoder = FakeDecoder(asyncio.get_running_loop())
    async with running(decoder) as recognizer:
        stream = recognizer.open_stream()

        with pytest.raises(EngineError, match="ValueError: not a number"):
            await stream.accept(chunk(float("nan")))
        assert await stream.accept(chunk(1)) == [Recognition("1 chunks", is_final=False)]


async def test_close_joins_every_worker_and_later_calls_fail() -> None:
    recognizer = BatchingRecognizer(FakeDecoder(asyncio.get_running_loop()), workers=3)
    assert len(worker_threads()) == 3
    stream = recognizer.open_stream()
    await stream.accept(chunk(1))

    await recognizer.aclose()

    assert worker_threads() == []
    with pytest.raises(EngineError, match="closed"):
        await stream.accept(chunk(2))
    await recognizer.aclose()  # a second close is harmless


async def test_a_closed_pool_reports_no_workers_and_no_slots() -> None:
    # The older server's JSON metrics add these up over engines: a pool that is gone must not
    # count in a process that opened another one after it.
    decoder = FakeDecoder(asyncio.get_running_loop())
    recognizer = BatchingRecognizer(decoder, workers=3, queue_size=7)

    def pool() -> list[float | None]:
        return [
            REGISTRY.get_sample_value(name, {"engine": decoder.name})
            for name in ("earshot_inference_workers", "earshot_inference_queue_slots")
        ]

    assert pool() == [3, 7]

    await recognizer.aclose()

    assert pool() == [0, 0]


async def test_close_lets_the_running_batch_finish_and_fails_calls_still_queued() -> None:
    decoder = FakeDecoder(asyncio.get_running_loop(), blocked=True)
    recognizer = BatchingRecognizer(decoder, workers=1)
    on_worker = asyncio.create_task(recognizer.open_stream().accept(chunk(1)))
    await decoder.entered
    queued = asyncio.create_task(recognizer.open_stream().accept(chunk(2)))
    await asyncio.sleep(0)

    closing = asyncio.create_task(recognizer.aclose())
    await asyncio.sleep(0)
    decoder.release.set()
    await closing

    assert worker_threads() == []
    assert await on_worker == [Recognition("1 chunks", is_final=False)]
    with pytest.raises(EngineError, match="closed"):
        await queued
    assert decoder.fed == [1]


async def test_it_is_a_recognizer_sized_by_the_settings(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    settings = Settings(inference_workers=2, inference_queue_size=8)
    batching = BatchingRecognizer.from_settings(paraformer.ParaformerDecoder(model), settings)
    recognizer: Recognizer = batching
    try:
        assert (recognizer.name, recognizer.sample_rate) == ("paraformer", 16_000)
        assert len(worker_threads()) == 2
        said = await recognise(recognizer, syllables(1.0))
        assert said[-1][-1].is_final
    finally:
        await recognizer.aclose()
    assert worker_threads() == []
