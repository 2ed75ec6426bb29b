"""Downmix interleaved PCM16 frames to mono float32 by their declared layout.

Talk audio arrives from aiortc as Opus-decoded s16 frames at 48 kHz, usually stereo (interleaved,
960 samples per channel per 20 ms) and sometimes mono. The system earshot replaces guessed the
layout from the buffer size and broke on mono; here the caller passes the frame's own channel count
(``av.AudioFrame.layout.channels``) and a buffer that does not fit it is refused.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]

_SCALE = np.float32(1.0 / 32768.0)


class InvalidLayout(ValueError):
    """A frame's buffer does not match its declared channel count."""


def downmix_s16(interleaved: npt.NDArray[np.int16], *, channels: int) -> Samples:
    """Average the channels of an interleaved s16 buffer into mono float32 in [-1, 1).

    Args:
        interleaved: samples as ``L R L R ...`` (any shape: it is flattened), or plain mono.
        channels: how many channels the frame declares (1 for mono, 2 for stereo, ...).

    Returns:
        One float32 sample per frame position (``len(interleaved) // channels`` of them).

    Raises:
        InvalidLayout: ``channels`` is below 1, or the buffer is not a whole number of frames.
    """
    if channels < 1:
        raise InvalidLayout(f"a frame needs at least one channel, not {channels}")
    flat = np.asarray(interleaved, dtype=np.int16).reshape(-1)
    if flat.size % channels:
        raise InvalidLayout(f"{flat.size} samples do not split into frames of {channels} channels")
    if channels == 1:
        return flat.astype(np.float32) * _SCALE
    # Summing in float32 before scaling keeps full-scale in-phase channels from clipping.
    frames = flat.reshape(-1, channels).astype(np.float32)
    mono: Samples = frames.mean(axis=1, dtype=np.float32) * _SCALE
    return mono
