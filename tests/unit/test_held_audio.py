"""Encoded frames held until the recogniser's next step could use them (earshot.audio.holding)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from earshot.audio import codecs
from earshot.audio.holding import HeldAudio, Released
from earshot.audio.resampling import StreamResampler
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.windowing import SHERPA_PARAFORMER
from earshot.events import Recognition

FRAME = 160  # 20 ms at 8 kHz
STEP = 9600  # 0.6 s at 16 kHz


def frames(n: int, seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal(n * FRAME) * 0.1).astype(np.float32)
    encoded = codecs.encode_alaw(audio)
    return [encoded[i : i + FRAME] for i in range(0, len(encoded), FRAME)]


def per_frame(chunks: list[bytes]) -> np.ndarray:
    """The stream as the gateway resampled it before holding: frame by frame, then the tail."""
    resampler = StreamResampler(8000, 16000)
    out = [resampler.process(codecs.decode(c, codecs.Codec.ALAW)) for c in chunks]
    return np.concatenate([*out, resampler.flush()])


def held() -> HeldAudio:
    return HeldAudio(codecs.Codec.ALAW, StreamResampler(8000, 16000))


def first_release(audio: HeldAudio, chunks: list[bytes]) -> tuple[int, Released]:
    """The index of the chunk that released audio for a step, and what it released."""
    for index, chunk in enumerate(chunks):
        released = audio.add(chunk, STEP)
        if released is not None:
            return index, released
    raise AssertionError("nothing was released")


def test_frames_are_held_until_they_could_make_up_what_the_recogniser_wants() -> None:
    audio = held()
    chunks = frames(40)
    # 30 frames of 8 kHz are 9600 samples at 16 kHz: the 30th could complete the step.
    assert all(audio.add(c, STEP) is None for c in chunks[:29])
    assert audio.holding
    released = audio.add(chunks[29], STEP)
    assert released is not None
    assert released.earlier > 0
    assert released.samples.size >= released.earlier
    assert not audio.holding


def test_nothing_is_held_when_the_recogniser_wants_no_more() -> None:
    audio = held()
    released = [audio.add(c, 0) for c in frames(10)]
    assert all(r is not None and r.earlier == 0 for r in released)


def test_held_and_released_audio_is_the_same_signal_as_frame_by_frame() -> None:
    chunks = frames(200)
    audio = held()
    out: list[np.ndarray] = []
    wanted = STEP
    for chunk in chunks:
        released = audio.add(chunk, wanted)
        if released is not None:
            out.append(released.samples)
            wanted = STEP
    out.append(audio.flush())
    np.testing.assert_allclose(np.concatenate(out), per_frame(chunks), atol=1e-6)


def test_after_a_release_the_resampler_fell_short_of_each_frame_is_released_at_once() -> None:
    # The resampler keeps part of what it is given (soxr emits blocks), so the first release falls
    # short of the step; the recogniser then wants the rest, and the frames that may bring it must
    # not be held again (that handed steps over up to four frames late).
    audio = held()
    chunks = frames(40)
    index, released = first_release(audio, chunks)
    short = STEP - released.samples.size
    assert short > 0, "soxr returned the whole step at once: the test has nothing to show"
    following = audio.add(chunks[index + 1], short)
    assert following is not None


def test_a_bad_frame_is_refused_without_losing_what_is_held() -> None:
    audio = held()
    chunks = frames(30)
    for chunk in chunks[:10]:
        assert audio.add(chunk, STEP) is None
    with pytest.raises(codecs.InvalidAudio, match="empty audio frame"):
        audio.add(b"", STEP)
    pcm = HeldAudio(codecs.Codec.PCM16LE, StreamResampler(8000, 16000))
    with pytest.raises(codecs.InvalidAudio, match="pcm16le frame has 3 bytes"):
        pcm.add(b"\x00\x01\x02", STEP)
    rest = [audio.add(c, STEP) for c in chunks[10:]]
    released = [r.samples for r in rest if r is not None]
    np.testing.assert_allclose(
        np.concatenate([*released, audio.flush()]), per_frame(chunks), atol=1e-6
    )


def test_restored_audio_comes_first_in_the_next_release_and_in_the_flush() -> None:
    audio = held()
    chunks = frames(40)
    _, released = first_release(audio, chunks)
    earlier = released.samples[: released.earlier]
    audio.restore(earlier)
    assert audio.holding
    # Chunks held after it (enough for the resampler to return some) are released after it.
    assert all(audio.add(c, STEP * 4) is None for c in chunks[-12:-2])
    again = audio.add(chunks[-2], 0)
    assert again is not None
    np.testing.assert_array_equal(again.samples[: earlier.size], earlier)
    assert again.earlier > earlier.size
    audio.restore(earlier)
    assert audio.add(chunks[-1], STEP * 2) is None
    np.testing.assert_array_equal(audio.flush()[: earlier.size], earlier)


def test_sixteen_bit_frames_are_counted_in_samples_not_bytes() -> None:
    pcm = (np.random.default_rng(5).standard_normal(8000) * 3000).astype("<i2").tobytes()
    audio = HeldAudio(codecs.Codec.PCM16LE, StreamResampler(8000, 16000))
    chunks = [pcm[i : i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]
    # 30 frames of 160 samples (320 bytes) at 8 kHz are the 9600 samples of the step at 16 kHz.
    assert all(audio.add(c, STEP) is None for c in chunks[:29])
    assert audio.add(chunks[29], STEP) is not None


class RecordingDecoder:
    """Records, for each hand-over of audio, the chunk being fed then and how many samples came."""

    name = "recording"
    sample_rate = 16000

    def __init__(self) -> None:
        self.chunk = -1
        self.handed: list[tuple[int, int]] = []

    def open(self) -> object:
        return object()

    def accept(self, stream: object, samples: np.ndarray) -> None:
        self.handed.append((self.chunk, samples.size))

    def finish(self, stream: object) -> None:
        pass

    def decode(self, streams: Sequence[object]) -> list[list[Recognition]]:
        return [[] for _ in streams]


def encoded(codec: codecs.Codec, seconds: float) -> bytes:
    audio = (np.random.default_rng(3).standard_normal(int(8000 * seconds)) * 0.1).astype(np.float32)
    if codec is codecs.Codec.PCM16LE:
        return (np.clip(audio, -1, 0.99) * 32768).astype("<i2").tobytes()
    return codecs.encode_ulaw(audio) if codec is codecs.Codec.ULAW else codecs.encode_alaw(audio)


async def hand_overs(
    data: bytes, codec: codecs.Codec, size: int, *, holding: bool
) -> tuple[list[tuple[int, int]], int]:
    """Each hand-over to a windowed recogniser (chunk index, samples) and the resampler calls, for
    ``data`` cut into ``size``-byte chunks, held or resampled on arrival."""
    decoder = RecordingDecoder()
    recognizer = BatchingRecognizer(decoder, window=SHERPA_PARAFORMER)
    resampler = StreamResampler(8000, 16000)
    calls = 0
    process = resampler.process

    def counted(samples: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return process(samples)

    resampler.process = counted  # type: ignore[method-assign]
    held = HeldAudio(codec, resampler)
    try:
        stream = recognizer.open_stream()
        for index, start in enumerate(range(0, len(data), size)):
            decoder.chunk = index
            chunk = data[start : start + size]
            if holding:
                released = held.add(chunk, stream.wanted_samples)
                if released is not None:
                    await stream.accept(released.samples)
            else:
                await stream.accept(resampler.process(codecs.decode(chunk, codec)))
        decoder.chunk = -1
        await stream.finish(held.flush() if holding else resampler.flush())
    finally:
        await recognizer.aclose()
    return decoder.handed, calls


@pytest.mark.asyncio
@pytest.mark.parametrize("codec", list(codecs.Codec))
@pytest.mark.parametrize("size", [160, 100])
async def test_held_chunks_reach_the_recogniser_at_the_same_chunks_as_resampled_on_arrival(
    codec: codecs.Codec, size: int
) -> None:
    data = encoded(codec, 12.0)
    on_arrival, every_chunk = await hand_overs(data, codec, size, holding=False)
    held, calls = await hand_overs(data, codec, size, holding=True)
    assert held == on_arrival
    assert len(on_arrival) >= 20  # many windows, not only the first
    # One resampler call per chunk on arrival; held, a few per window: the release, and the chunks
    # after it that may bring the resampler's next block out (not those that cannot: its block).
    assert calls < every_chunk / 4
    assert calls <= 5 * len(on_arrival)


def test_a_flushed_stream_takes_no_more_audio() -> None:
    audio = held()
    audio.add(frames(1)[0], STEP)
    assert audio.flush().size
    assert audio.flush().size == 0  # a second flush has nothing more
    with pytest.raises(RuntimeError, match="flushed"):
        audio.add(frames(1)[0], STEP)
    with pytest.raises(RuntimeError, match="flushed"):
        audio.restore(np.zeros(10, np.float32))
