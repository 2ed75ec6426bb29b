"""Stateful streaming resampling."""

from __future__ import annotations

import numpy as np
import soxr

from earshot.audio.resampling import StreamResampler


def _sine(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _resample_in_chunks(signal: np.ndarray, sizes: list[int]) -> np.ndarray:
    resampler = StreamResampler(8000, 16000)
    pieces, start, i = [], 0, 0
    while start < signal.size:
        size = sizes[i % len(sizes)]
        pieces.append(resampler.process(signal[start : start + size]))
        start, i = start + size, i + 1
    pieces.append(resampler.flush())
    return np.concatenate(pieces)


def test_odd_sized_chunks_resample_exactly_like_the_whole_signal() -> None:
    signal = _sine(8000, 2.0)
    whole = soxr.resample(signal, 8000, 16000, quality="HQ")
    chunked = _resample_in_chunks(signal, [17, 160, 1, 333, 80, 999])
    assert chunked.size == whole.size
    assert np.abs(chunked - whole).max() < 1e-5


def test_chunked_output_has_no_discontinuity_at_chunk_edges() -> None:
    signal = _sine(8000, 1.0)
    out = _resample_in_chunks(signal, [37])
    # A 440 Hz sine at 16 kHz moves at most 2*pi*440/16000*0.5 ~ 0.087 between samples; a click at
    # a chunk edge (what per-chunk resampling does) jumps far more.
    steady = out[400:-400]
    assert np.abs(np.diff(steady)).max() < 0.1


def test_resampling_each_chunk_alone_would_click() -> None:
    # The defect of the older systems, shown so the test above is known to be able to fail.
    signal = _sine(8000, 1.0)
    pieces = [soxr.resample(signal[i : i + 37], 8000, 16000) for i in range(0, signal.size, 37)]
    assert np.abs(np.diff(np.concatenate(pieces)[400:-400])).max() > 0.1


def test_same_rate_passes_samples_through() -> None:
    resampler = StreamResampler(16000, 16000)
    chunk = _sine(16000, 0.1)
    assert resampler.process(chunk) is chunk
    assert resampler.flush().size == 0


def test_flush_returns_the_held_tail_once() -> None:
    resampler = StreamResampler(8000, 16000)
    held = resampler.process(_sine(8000, 0.02))
    tail = resampler.flush()
    assert held.size + tail.size == 320
    assert resampler.flush().size == 0
