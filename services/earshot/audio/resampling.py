"""Stateful streaming resampling: one resampler per audio stream.

The systems earshot replaces resampled every chunk on its own, which clicks at every chunk edge.
A :class:`StreamResampler` keeps the filter state across chunks, so a stream cut into any chunk sizes
resamples to the same signal as the whole stream at once. soxr's HQ filter holds back about 100 ms
before its first output; :meth:`StreamResampler.flush` returns that tail at the end of the stream.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.float32]

_EMPTY: Samples = np.zeros(0, dtype=np.float32)


class StreamResampler:
    """Resamples one mono float32 stream from ``source_rate`` to ``target_rate``."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self.target_rate = target_rate
        self._stream = (
            None
            if source_rate == target_rate
            else soxr.ResampleStream(source_rate, target_rate, 1, dtype="float32", quality="HQ")
        )
        self._flushed = False

    def process(self, samples: Samples) -> Samples:
        """Resample the next chunk of the stream (the output may be shorter than expected at first)."""
        if self._flushed:
            raise RuntimeError("the resampler was flushed: the stream has ended")
        if self._stream is None:
            return samples
        out: Samples = self._stream.resample_chunk(samples)
        return out

    def flush(self) -> Samples:
        """End the stream and return the samples the filter still holds."""
        if self._flushed:
            return _EMPTY
        self._flushed = True
        if self._stream is None:
            return _EMPTY
        out: Samples = self._stream.resample_chunk(_EMPTY, last=True)
        return out
