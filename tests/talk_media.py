"""Media for Talk tests: a real-time aiortc audio track playing given samples, speech-like audio,
espeak-ng speech."""

from __future__ import annotations

import asyncio
import fractions
import shutil
import subprocess
import time
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
import soxr
from aiortc import MediaStreamTrack

RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz, as Opus frames are


def syllables(seconds: float, *, rate: int = RATE, pitch: float = 120.0) -> npt.NDArray[np.float32]:
    """Speech-like audio: a buzzing voice at ``pitch`` Hz that swells and fades 4 times a second."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 20))
    return (0.1 * voice * np.sin(4 * np.pi * t) ** 2).astype(np.float32)


def espeak(text: str, workdir: Path, *, voice: str) -> npt.NDArray[np.float32]:
    """``text`` spoken by espeak-ng (150 words a minute) as float32 samples at 48 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: apt-get install espeak-ng", pytrace=False)
    path = workdir / f"{voice}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    samples: npt.NDArray[np.float32] = soxr.resample(pcm.astype(np.float32) / 32768, rate, RATE)
    return samples.astype(np.float32)


class PlayedTrack(MediaStreamTrack):
    """Plays mono float32 samples at 48 kHz in real time, then silence, as s16 frames."""

    kind = "audio"

    def __init__(self, samples: npt.NDArray[np.float32], *, layout: str = "mono") -> None:
        super().__init__()
        pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
        self._pcm = pcm
        self._layout = layout
        self._channels = 2 if layout == "stereo" else 1
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self._pcm[self._pts : self._pts + FRAME]
        if chunk.size < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.int16)])
        data = np.repeat(chunk, self._channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout=self._layout)
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame
