"""Downmixing Talk frames by their declared layout, then resampling them statefully."""

from __future__ import annotations

import numpy as np
import pytest

from earshot.audio.downmixing import InvalidLayout, downmix_s16
from earshot.audio.resampling import StreamResampler


def test_stereo_frames_average_their_two_channels() -> None:
    interleaved = np.array([1000, 3000, -2000, 2000, 32767, 32767], dtype=np.int16)
    mono = downmix_s16(interleaved, channels=2)
    np.testing.assert_allclose(mono, np.array([2000, 0, 32767]) / 32768, rtol=1e-6)
    assert mono.dtype == np.float32


def test_mono_frames_are_only_scaled() -> None:
    samples = np.array([0, 16384, -32768], dtype=np.int16)
    np.testing.assert_allclose(downmix_s16(samples, channels=1), [0.0, 0.5, -1.0])


def test_a_mono_frame_is_not_halved_in_length_as_a_guess_would() -> None:
    samples = np.zeros(960, dtype=np.int16)
    assert downmix_s16(samples, channels=1).size == 960
    assert downmix_s16(np.zeros(1920, dtype=np.int16), channels=2).size == 960


def test_an_aiortc_shaped_stereo_frame_downmixes_per_position() -> None:
    # aiortc's packed s16 frames come as a (1, samples * channels) array.
    left = np.full(960, 100, dtype=np.int16)
    right = np.full(960, 300, dtype=np.int16)
    packed = np.stack([left, right], axis=1).reshape(1, -1)
    np.testing.assert_allclose(downmix_s16(packed, channels=2), np.full(960, 200 / 32768))


def test_a_buffer_that_does_not_fit_its_layout_is_refused() -> None:
    with pytest.raises(InvalidLayout, match="do not split"):
        downmix_s16(np.zeros(961, dtype=np.int16), channels=2)
    with pytest.raises(InvalidLayout, match="at least one channel"):
        downmix_s16(np.zeros(4, dtype=np.int16), channels=0)


def test_48k_frames_resample_to_16k_without_losing_length() -> None:
    resampler = StreamResampler(48_000, 16_000)
    t = np.arange(48_000) / 48_000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.repeat(tone, 2)
    out = [resampler.process(downmix_s16(f, channels=2)) for f in np.split(stereo, 50)]
    total = sum(o.size for o in out) + resampler.flush().size
    assert abs(total - 16_000) <= 1
