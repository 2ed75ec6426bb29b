"""When the audio behind each answer arrived, for recognisers that answer a chunk with a later call.

May do: read the clock. Must not: do I/O.

A pipelined recogniser (Triton) sends a stream's chunk without waiting for the answers of earlier
ones, so a call may return what an earlier chunk made the model say. Each such
:class:`~earshot.events.Recognition` carries ``heard``, the moment within the call that handed its
audio over; a gateway hands each chunk over through :meth:`ChunkArrivals.hand` and asks
:meth:`ChunkArrivals.of` when the chunk behind an answer arrived, so a latency is measured from the
audio that caused it, not from whichever chunk's call returned it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from earshot.events import Recognition

#: How many chunks' arrival times a stream keeps to attribute answers a recogniser returns late
#: (Triton: at most a few chunks late; 4096 chunks are over a minute of 20 ms frames).
KEPT = 4096


@dataclass(slots=True)
class ChunkArrivals:
    """When the chunks handed to one recogniser stream arrived.

    A recognition's ``heard`` is taken within the call that handed its audio over, so its chunk is
    the last one handed over at or before it. Answers come in order: chunks before an answered one
    are forgotten.
    """

    handed: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=KEPT))

    def hand(self, arrived: float) -> None:
        """A chunk that arrived at ``arrived`` is handed to the recogniser now."""
        self.handed.append((time.perf_counter(), arrived))

    def of(self, recognition: Recognition, arrived: float) -> float:
        """When the chunk behind ``recognition`` arrived (``arrived``: the chunk of this call)."""
        if recognition.heard is None:
            while len(self.handed) > 1:
                self.handed.popleft()
            return arrived
        while len(self.handed) > 1 and self.handed[1][0] <= recognition.heard:
            self.handed.popleft()
        if self.handed and self.handed[0][0] <= recognition.heard:
            return self.handed[0][1]
        return min(recognition.heard, arrived)  # older than what is kept

    def after_answered(self) -> float | None:
        """When the chunk after the one last answered arrived; None if none was handed over yet."""
        return self.handed[1][1] if len(self.handed) > 1 else None
