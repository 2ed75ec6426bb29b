"""Gathering a stream's audio until it is due at the model (a :class:`HandOver` says when).

May do: hold audio of one stream. Must not: call a model, use asyncio or threads.

A model that steps fixed frames (Kyutai: 80 ms) can do nothing with audio that does not complete a
frame, and each hand-over of audio costs something (a wake-up of the decoding clock's thread, a
gRPC and a Python-backend round trip through Triton). A stream therefore hands its audio over only
when, with what the model already holds of an unfinished frame, it completes one: with 20 ms
chunks, one hand-over per 80 ms instead of four. What the model says can only change when a frame
is stepped, so the chunks held answer nothing new; the one that completes a frame is answered with
what the model said. A streaming Paraformer through Triton decodes 0.6 s windows but takes its
audio in 40 ms requests, and at once what completes a window
(:data:`~earshot.engines.windowing.PARAFORMER_THROUGH_TRITON`).
"""

from __future__ import annotations

import numpy as np

from earshot.engines.recognizers import Samples
from earshot.engines.windowing import HandOver

_EMPTY = np.zeros(0, dtype=np.float32)


class FrameGatherer:
    """The audio of one stream not yet handed over, and how much of a frame the model holds."""

    def __init__(self, window: HandOver | None) -> None:
        """Gather for a model stepping by ``window`` (None: hand every chunk over at once)."""
        self._window = window
        self._held: list[Samples] = []
        self._held_samples = 0
        self._handed_samples = 0

    def add(self, samples: Samples) -> bool:
        """Hold a chunk; True when what is held should be handed over now (:meth:`take`)."""
        self._held.append(np.asarray(samples, dtype=np.float32))
        self._held_samples += len(samples)
        if self._window is None:
            return True
        handed = self._handed_samples
        return handed + self._held_samples >= self._window.ready_at(handed)

    def take(self) -> Samples:
        """What is held, counted as handed over (also when it is nothing)."""
        held, self._held = self._held, []
        self._handed_samples += self._held_samples
        self._held_samples = 0
        if not held:
            return _EMPTY
        return held[0] if len(held) == 1 else np.concatenate(held)

    def restart(self, handed_samples: int = 0) -> None:
        """The model starts a new stream (after a lost connection) with ``handed_samples``."""
        self._handed_samples = handed_samples
