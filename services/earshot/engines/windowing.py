"""When a chunk-wise streaming decoder has its next decode step, counted in samples fed.

A streaming decoder such as sherpa-onnx's Paraformer decodes fixed windows of feature frames: audio
handed to it between two windows only waits in its stream. :class:`DecodingWindow` predicts, from
the number of samples a stream was fed, at which total the next window is complete, so that a
caller can hold audio and hand it over once per window instead of once per 20 ms frame (one thread
hand-off per window, bench/reports/gateway_streams.md).

May do: arithmetic. Must not: import an engine, use asyncio or threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DecodingWindow:
    """A decoder's first step is ready after ``first`` samples, each further one ``step`` later.

    Assumes the stream is decoded whenever a step is ready, as every caller here does (a decode
    runs every ready step); resetting a segment at an endpoint does not move the windows.
    """

    first: int
    step: int

    def __post_init__(self) -> None:
        if self.first <= 0 or self.step <= 0:
            raise ValueError(f"a decoding window needs positive sizes, not {self}")

    def ready_at(self, fed: int) -> int:
        """The total of samples fed at which the step after those ``fed`` samples allow is ready."""
        if fed < self.first:
            return self.first
        return self.first + ((fed - self.first) // self.step + 1) * self.step


class HandOver(Protocol):
    """When a stream's gathered audio goes to the model (:mod:`earshot.engines.gathering`)."""

    def ready_at(self, fed: int) -> int:
        """The total of samples fed at which the next hand-over after ``fed`` samples is due."""
        ...


@dataclass(frozen=True, slots=True)
class EarliestOf:
    """Hands audio over at whichever of several windows' boundaries comes first."""

    windows: tuple[DecodingWindow, ...]

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("hand-over needs at least one window")

    def ready_at(self, fed: int) -> int:
        """The nearest boundary of any of the windows after ``fed`` samples."""
        return min(window.ready_at(fed) for window in self.windows)


# Kyutai (moshi's Mimi) steps 80 ms frames at 24 kHz: earshot.engines.kyutai.FRAME_SAMPLES, checked
# by tests/unit/test_frame_gathering.py (this module must not import the engine, which needs torch).
KYUTAI_FRAME_SAMPLES = 1920
KYUTAI = DecodingWindow(first=KYUTAI_FRAME_SAMPLES, step=KYUTAI_FRAME_SAMPLES)

# sherpa-onnx's streaming Paraformer (online-recognizer-paraformer-impl.h): 80-dim fbank frames of
# 400 samples every 160 (16 kHz); a stream is ready while processed + 61 < frames ready, and each
# decode advances the processed frames by 61 - 1. Checked against sherpa's own is_ready by
# tests/unit/test_decoding_window.py.
_FBANK_WINDOW = 400
_FBANK_SHIFT = 160
_PARAFORMER_CHUNK_FRAMES = 61

SHERPA_PARAFORMER = DecodingWindow(
    first=_FBANK_WINDOW + _PARAFORMER_CHUNK_FRAMES * _FBANK_SHIFT,
    step=(_PARAFORMER_CHUNK_FRAMES - 1) * _FBANK_SHIFT,
)

# A streaming Paraformer through Triton: a request costs a gRPC and a Python-backend round trip, so
# a stream sends 40 ms of audio per request (telephony's 20 ms frames two by two), and at once
# whatever completes sherpa's next step, so no decoding waits for the 40 ms: checked by
# tests/unit/test_frame_gathering.py. bench/reports/triton_batching.md measures the batches.
PARAFORMER_REQUEST_SAMPLES = 640
PARAFORMER_THROUGH_TRITON = EarliestOf(
    (
        DecodingWindow(first=PARAFORMER_REQUEST_SAMPLES, step=PARAFORMER_REQUEST_SAMPLES),
        SHERPA_PARAFORMER,
    )
)
