"""Kyutai segments end on the VAD head's pause (PROTOCOLS.md section 4) and at stream end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from earshot.engines import kyutai, tiny_kyutai
from earshot.engines.kyutai import FRAME_SAMPLES, SAMPLE_RATE, KyutaiDecoder, KyutaiOptions
from earshot.engines.kyutai_checkpoints import KyutaiModel
from earshot.engines.recognizers import Samples
from earshot.events import Recognition

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> KyutaiModel:
    return tiny_kyutai.random_model(seed=0)


def _decoder(
    model: KyutaiModel, *, pause_seconds: float = 2.0, pause_threshold: float = 0.5
) -> Iterator[KyutaiDecoder]:
    options = KyutaiOptions(
        max_streams=2, pause_seconds=pause_seconds, pause_threshold=pause_threshold
    )
    decoder = KyutaiDecoder(model, options)
    yield decoder
    decoder.close()


@pytest.fixture
def decoder(model: KyutaiModel) -> Iterator[KyutaiDecoder]:
    yield from _decoder(model)


def _noise(seed: int, seconds: float) -> Samples:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def _silence(seconds: float) -> Samples:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def _by_frame(decoder: KyutaiDecoder, audio: Samples) -> list[tuple[int, Recognition]]:
    """Decode frame by frame; each recognition with the number of frames fed when it came out."""
    stream = decoder.open()
    said: list[tuple[int, Recognition]] = []
    frames = -(-len(audio) // FRAME_SAMPLES)
    for frame in range(frames):
        decoder.accept(stream, audio[frame * FRAME_SAMPLES : (frame + 1) * FRAME_SAMPLES])
        said += [(frame + 1, r) for r in decoder.decode([stream])[0]]
    decoder.finish(stream)
    return said + [(frames, r) for r in decoder.decode([stream])[0]]


def test_two_seconds_of_pause_end_the_segment_with_a_final(decoder: KyutaiDecoder) -> None:
    speech = round(1.0 * SAMPLE_RATE / FRAME_SAMPLES)  # frames
    audio = np.concatenate([_noise(1, 1.0), _silence(3.0), _noise(2, 1.0)])

    said = _by_frame(decoder, audio)

    finals = [(frame, r) for frame, r in said if r.is_final]
    assert len(finals) == 2
    (first_frame, first), (last_frame, last) = finals
    assert 25 <= first_frame - speech <= 30, "about two seconds (25 steps of 80 ms) into the pause"
    partials = [(frame, r.text) for frame, r in said if not r.is_final]
    assert first.text == [text for frame, text in partials if frame <= first_frame][-1]
    second_speech = speech + round(3.0 * SAMPLE_RATE / FRAME_SAMPLES)
    assert all(frame > second_speech for frame, _ in partials if frame > first_frame)
    assert last_frame == -(-len(audio) // FRAME_SAMPLES), "at finish"
    assert last.text
    assert last.text != first.text


def test_a_pause_shorter_than_two_seconds_keeps_one_segment(decoder: KyutaiDecoder) -> None:
    audio = np.concatenate([_noise(3, 1.0), _silence(1.2), _noise(4, 1.0)])

    said = [r for _, r in _by_frame(decoder, audio)]

    assert [r.is_final for r in said].count(True) == 1
    assert said[-1].is_final


def test_pause_seconds_sets_how_long_a_pause_ends_a_segment(model: KyutaiModel) -> None:
    audio = np.concatenate([_noise(3, 1.0), _silence(1.2), _noise(4, 1.0)])

    for decoder in _decoder(model, pause_seconds=0.8):
        said = [r for _, r in _by_frame(decoder, audio)]

    assert [r.is_final for r in said].count(True) == 2


def test_a_pause_threshold_above_the_heads_probability_never_ends_a_segment(
    model: KyutaiModel,
) -> None:
    audio = np.concatenate([_noise(5, 1.0), _silence(3.0), _noise(6, 1.0)])

    for decoder in _decoder(model, pause_threshold=0.99):
        said = [r for _, r in _by_frame(decoder, audio)]

    assert [r.is_final for r in said].count(True) == 1


def test_finish_finalises_the_pending_text_once(decoder: KyutaiDecoder) -> None:
    stream = decoder.open()
    decoder.accept(stream, _noise(7, 1.0))
    said = decoder.decode([stream])[0]
    decoder.finish(stream)

    finished = decoder.decode([stream])[0]

    assert [r.is_final for r in said] == [False]
    assert finished[-1] == Recognition(text=finished[0].text, is_final=True)
    assert finished[-1].text.startswith(said[0].text)
    assert decoder.decode([stream]) == [[]]


def test_load_kyutai_without_a_model_dir_runs_the_tiny_model(tmp_path: Path) -> None:
    decoder = kyutai.load_kyutai(
        model_dir=None, cache_dir=tmp_path, options=KyutaiOptions(max_streams=1)
    )
    try:
        said = [r for _, r in _by_frame(decoder, _noise(9, 0.5))]
    finally:
        decoder.close()

    assert said
    assert said[-1].is_final
    assert (tmp_path / "kyutai-tiny-v1" / "config.json").is_file()
