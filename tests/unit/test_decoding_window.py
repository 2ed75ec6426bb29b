"""DecodingWindow: sherpa's own readiness rule, and a BatchingRecognizer that hands audio over once
per decoding window with the same results as frame by frame."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
import sherpa_onnx

from earshot.engines import paraformer, tiny_paraformer
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import EngineOverloaded, Samples
from earshot.engines.windowing import SHERPA_PARAFORMER, DecodingWindow
from earshot.events import Recognition
from tests.unit.test_batching_recognizer import RATE, syllables

FRAME = 320  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tiny_paraformer.ParaformerFiles:
    return tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"))


def speech_with_pauses() -> Samples:
    """Three phrases, each followed by 1.5 s of silence: sherpa ends a segment after each."""
    pause = np.zeros(int(1.5 * RATE), dtype=np.float32)
    return np.concatenate(
        [part for pitch in (110.0, 150.0, 190.0) for part in (syllables(1.3, pitch=pitch), pause)]
    )


def test_it_is_sherpas_own_readiness_rule(model: tiny_paraformer.ParaformerFiles) -> None:
    recognizer = sherpa_onnx.OnlineRecognizer.from_paraformer(
        tokens=str(model.tokens),
        encoder=str(model.encoder),
        decoder=str(model.decoder),
        num_threads=1,
        sample_rate=RATE,
        enable_endpoint_detection=True,
        rule1_min_trailing_silence=0.5,
        rule2_min_trailing_silence=0.8,
    )
    stream = recognizer.create_stream()
    audio = speech_with_pauses()
    # Uneven pieces, down to single samples, so that every boundary is crossed at every phase.
    sizes = itertools.cycle((1, 7, 159, 320, 333, 1000, 2))
    fed = steps = endpoints = 0
    ready_at = SHERPA_PARAFORMER.first
    while fed < audio.size:
        size = next(sizes)
        stream.accept_waveform(RATE, audio[fed : fed + size])
        fed = min(fed + size, audio.size)
        assert bool(recognizer.is_ready(stream)) == (fed >= ready_at), (fed, ready_at)
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
            steps += 1
            if recognizer.is_endpoint(stream):
                recognizer.reset(stream)
                endpoints += 1
        ready_at = SHERPA_PARAFORMER.ready_at(fed)
    assert steps == (audio.size - SHERPA_PARAFORMER.first) // SHERPA_PARAFORMER.step + 1
    assert endpoints >= 2  # resets at endpoints do not move the windows


def test_it_counts_windows_from_the_samples_fed() -> None:
    window = DecodingWindow(first=100, step=30)
    assert [window.ready_at(n) for n in (0, 99, 100, 129, 130, 160)] == [
        100,
        100,
        130,
        130,
        160,
        190,
    ]
    with pytest.raises(ValueError, match="positive"):
        DecodingWindow(first=0, step=30)


class CountingDecoder(paraformer.ParaformerDecoder):
    """The real decoder, counting the audio handed to it and the decode calls."""

    def __init__(self, files: tiny_paraformer.ParaformerFiles) -> None:
        super().__init__(files)
        self.accepts = 0
        self.decodes = 0

    def accept(self, stream: paraformer.ParaformerStream, samples: Samples) -> None:
        self.accepts += 1
        super().accept(stream, samples)

    def decode(self, streams: Sequence[paraformer.ParaformerStream]) -> list[list[Recognition]]:
        self.decodes += 1
        return super().decode(streams)


async def frame_by_frame(
    model: tiny_paraformer.ParaformerFiles, window: DecodingWindow | None, audio: Samples
) -> tuple[list[list[Recognition]], CountingDecoder]:
    decoder = CountingDecoder(model)
    recognizer = BatchingRecognizer(decoder, window=window)
    try:
        stream = recognizer.open_stream()
        said = [await stream.accept(audio[s : s + FRAME]) for s in range(0, audio.size, FRAME)]
        said.append(await stream.finish())
    finally:
        await recognizer.aclose()
    return said, decoder


@pytest.mark.asyncio
async def test_a_window_hands_audio_over_once_per_step_with_the_same_results(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    audio = speech_with_pauses()
    per_frame, unwindowed = await frame_by_frame(model, None, audio)
    per_window, windowed = await frame_by_frame(model, SHERPA_PARAFORMER, audio)

    # Every call answers what it answered frame by frame: same partials, finals, same frames.
    assert per_window == per_frame
    assert sum(r.is_final for said in per_frame for r in said) >= 3
    frames = -(-audio.size // FRAME)
    assert unwindowed.accepts == frames
    steps = (audio.size - SHERPA_PARAFORMER.first) // SHERPA_PARAFORMER.step + 1
    # One hand-off per decoding step, plus the end of the stream with what it still held.
    assert windowed.accepts == steps + 1
    assert windowed.decodes <= steps + 1


@dataclass(eq=False)
class HeldStream:
    sizes: list[int] = field(default_factory=list)


class GatedDecoder:
    """Records the size of each hand-off; decode waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()

    name = "gated"
    sample_rate = RATE

    def open(self) -> HeldStream:
        return HeldStream()

    def accept(self, stream: HeldStream, samples: Samples) -> None:
        stream.sizes.append(samples.size)

    def finish(self, stream: HeldStream) -> None:
        pass

    def decode(self, streams: Sequence[HeldStream]) -> list[list[Recognition]]:
        self.release.wait()
        return [[] for _ in streams]


@pytest.mark.asyncio
async def test_audio_refused_for_overload_is_not_taken_and_what_was_held_is_kept() -> None:
    decoder = GatedDecoder()
    recognizer = BatchingRecognizer(
        decoder, queue_size=1, queue_timeout=0.05, window=DecodingWindow(first=300, step=300)
    )
    try:
        busy = recognizer.open_stream()
        in_flight = asyncio.create_task(busy.accept(np.zeros(300, np.float32)))
        await asyncio.sleep(0.01)
        stream = recognizer.open_stream()
        assert await stream.accept(np.zeros(200, np.float32)) == []  # held: no slot needed
        with pytest.raises(EngineOverloaded):
            await stream.accept(np.zeros(150, np.float32))
        decoder.release.set()
        await in_flight
        await stream.finish(np.zeros(10, np.float32))
        # The 150 refused samples were never handed over; the 200 held before them were.
        assert stream._work.state.sizes == [210]
    finally:
        decoder.release.set()
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_a_stream_says_how_much_audio_its_next_step_still_wants() -> None:
    decoder = GatedDecoder()
    decoder.release.set()
    recognizer = BatchingRecognizer(decoder, window=DecodingWindow(first=300, step=200))
    unwindowed = BatchingRecognizer(GatedDecoder())
    try:
        stream = recognizer.open_stream()
        assert stream.wanted_samples == 300
        await stream.accept(np.zeros(120, np.float32))
        assert stream.wanted_samples == 180  # held, still short of the first step
        await stream.accept(np.zeros(200, np.float32))
        assert stream._work.state.sizes == [320]
        assert stream.wanted_samples == 180  # the second step is ready at 500
        assert unwindowed.open_stream().wanted_samples == 0
    finally:
        await recognizer.aclose()
        await unwindowed.aclose()
