"""The async BatchingRecognizer drives the Kyutai decoder like any other BatchDecoder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from earshot.engines import tiny_kyutai
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.kyutai import FRAME_SAMPLES, SAMPLE_RATE, KyutaiDecoder, KyutaiOptions
from earshot.engines.kyutai_checkpoints import KyutaiModel
from earshot.engines.recognizers import Samples
from earshot.events import Recognition

torch.set_num_threads(1)

_CHUNK = FRAME_SAMPLES // 2 + 40  # chunks that straddle frames


def _talk(seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    speech = (0.1 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)
    return np.concatenate([speech, np.zeros(5 * SAMPLE_RATE // 2, np.float32), speech[:9000]])


def _finals(said: list[Recognition]) -> list[str]:
    return [r.text for r in said if r.is_final]


def _alone(model: KyutaiModel, audio: Samples) -> list[Recognition]:
    decoder = KyutaiDecoder(model, KyutaiOptions(max_streams=1))
    try:
        stream = decoder.open()
        decoder.accept(stream, audio)
        said = decoder.decode([stream])[0]
        decoder.finish(stream)
        return said + decoder.decode([stream])[0]
    finally:
        decoder.close()


@pytest.mark.asyncio
async def test_concurrent_streams_through_two_workers_get_their_own_segments() -> None:
    model = tiny_kyutai.random_model(seed=0)
    audios = [_talk(seed) for seed in (1, 2, 3)]
    expected = [_finals(_alone(model, audio)) for audio in audios]
    decoder = KyutaiDecoder(model, KyutaiOptions(max_streams=4))
    recognizer = BatchingRecognizer(decoder, workers=2, max_batch=4)

    async def talk(audio: Samples) -> list[Recognition]:
        stream = recognizer.open_stream()
        said: list[Recognition] = []
        for start in range(0, len(audio), _CHUNK):
            said += await stream.accept(audio[start : start + _CHUNK])
        return said + await stream.finish()

    try:
        said = await asyncio.gather(*(talk(audio) for audio in audios))
    finally:
        await recognizer.aclose()
        decoder.close()

    assert [_finals(s) for s in said] == expected
    assert all(len(finals) == 2 for finals in expected)
