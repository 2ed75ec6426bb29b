"""KyutaiDecoder batches streams without crosstalk and does not care how audio is chunked."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch

from earshot.engines import kyutai, tiny_kyutai
from earshot.engines.kyutai import FRAME_SAMPLES, SAMPLE_RATE, KyutaiDecoder, KyutaiStream
from earshot.engines.kyutai_checkpoints import KyutaiModel
from earshot.engines.recognizers import EngineError, EngineOverloaded, Samples
from earshot.events import Recognition

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> KyutaiModel:
    return tiny_kyutai.random_model(seed=0)


@pytest.fixture
def decoder(model: KyutaiModel) -> Iterator[KyutaiDecoder]:
    decoder = KyutaiDecoder(model, kyutai.KyutaiOptions(max_streams=4))
    yield decoder
    decoder.close()


def _noise(seed: int, seconds: float) -> Samples:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE))).astype(np.float32)


def _silence(seconds: float) -> Samples:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)


def _talk(seed: int) -> Samples:
    """Two bursts of 'speech' around a pause long enough to end a segment."""
    return np.concatenate([_noise(seed, 0.8), _silence(2.4), _noise(seed + 100, 0.6)])


def _decode_alone(decoder: KyutaiDecoder, audio: Samples, chunk: int) -> list[Recognition]:
    stream = decoder.open()
    said: list[Recognition] = []
    for start in range(0, len(audio), chunk):
        decoder.accept(stream, audio[start : start + chunk])
        said += decoder.decode([stream])[0]
    decoder.finish(stream)
    return said + decoder.decode([stream])[0]


def _decode_together(
    decoder: KyutaiDecoder, audios: Sequence[Samples], starts: Sequence[int]
) -> list[list[Recognition]]:
    """Feed frame by frame; stream i opens at frame starts[i] and is finished after its audio."""
    streams: list[KyutaiStream | None] = [None] * len(audios)
    said: list[list[Recognition]] = [[] for _ in audios]
    frames = max(
        start + -(-len(a) // FRAME_SAMPLES) for a, start in zip(audios, starts, strict=True)
    )
    for frame in range(frames + 1):
        for i, (audio, start) in enumerate(zip(audios, starts, strict=True)):
            if frame == start:
                streams[i] = decoder.open()
            stream = streams[i]
            if stream is None or stream.finished:
                continue
            offset = (frame - start) * FRAME_SAMPLES
            if offset < len(audio):
                decoder.accept(stream, audio[offset : offset + FRAME_SAMPLES])
            else:
                decoder.finish(stream)
        live = [(i, s) for i, s in enumerate(streams) if s is not None and not s.done]
        for (i, _), out in zip(live, decoder.decode([s for _, s in live]), strict=True):
            said[i] += out
    return said


def _finals(said: list[Recognition]) -> list[str]:
    return [r.text for r in said if r.is_final]


def test_three_streams_decoded_as_one_batch_equal_each_decoded_alone(
    decoder: KyutaiDecoder,
) -> None:
    audios = [_talk(1), _talk(2)[: 3 * SAMPLE_RATE], _talk(3)]

    together = _decode_together(decoder, audios, starts=[0, 0, 0])
    alone = [_decode_alone(decoder, audio, FRAME_SAMPLES) for audio in audios]

    assert together == alone
    assert len({tuple(_finals(said)) for said in alone}) == 3, "the inputs should differ"
    assert all(_finals(said) for said in alone)


def test_streams_that_join_and_leave_a_running_batch_decode_as_if_alone(
    decoder: KyutaiDecoder,
) -> None:
    # The first stream leaves at frame 25, the third joins at 30 in the slot it left.
    audios = [_noise(4, 2.0), _talk(5), _talk(6)]

    together = _decode_together(decoder, audios, starts=[0, 7, 30])
    alone = [_decode_alone(decoder, audio, FRAME_SAMPLES) for audio in audios]

    assert together == alone
    assert all(_finals(said) for said in alone)


@pytest.mark.parametrize("chunk", [7, 1000, 1919, 2000, 5003])
def test_odd_chunk_sizes_give_the_same_segments_as_whole_frames(
    decoder: KyutaiDecoder, chunk: int
) -> None:
    audio = _talk(7)[: -FRAME_SAMPLES // 3]  # not a whole number of frames either

    by_frame = _decode_alone(decoder, audio, FRAME_SAMPLES)
    chunked = _decode_alone(decoder, audio, chunk)

    assert _finals(chunked) == _finals(by_frame)
    # Several frames per decode call report only the last partial of the call.
    partials = {r.text for r in by_frame if not r.is_final}
    assert {r.text for r in chunked if not r.is_final} <= partials
    if chunk < FRAME_SAMPLES:
        assert chunked == by_frame


def test_silence_alone_says_nothing(decoder: KyutaiDecoder) -> None:
    assert _decode_alone(decoder, _silence(3.0), FRAME_SAMPLES) == []


def test_a_stream_opened_beyond_the_slots_is_refused_until_one_is_freed(
    decoder: KyutaiDecoder,
) -> None:
    streams = [decoder.open() for _ in range(4)]
    with pytest.raises(EngineOverloaded):
        decoder.open()

    decoder.finish(streams[0])
    decoder.decode(streams)

    assert decoder.open().slot == streams[0].slot


def test_a_stream_dropped_without_finishing_gives_its_slot_back(decoder: KyutaiDecoder) -> None:
    for _ in range(6):
        stream = decoder.open()
        decoder.accept(stream, _noise(8, 0.2))
        decoder.decode([stream])
        del stream  # CPython frees it at once; the next open finds the slot free


def test_audio_after_finish_is_an_engine_error(decoder: KyutaiDecoder) -> None:
    stream = decoder.open()
    decoder.finish(stream)

    with pytest.raises(EngineError, match="after the end"):
        decoder.accept(stream, _noise(9, 0.1))
