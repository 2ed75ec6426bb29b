"""Giving freed heap memory back to the operating system as streams end.

glibc keeps memory that Python, numpy and the recogniser freed in its heaps for reuse; after many
connections closed, a gateway's RSS stays near its peak although nothing uses that memory
(bench/reports/idle_connections.md). ``malloc_trim(0)`` returns the free pages of every heap.

When: as the last stream ends (nothing waits for the gateway then), and, for a gateway that is
never without a stream (callers that reconnect, a busy pool), as a stream ends at least
:data:`RELEASE_INTERVAL_SECONDS` after the last release. Without the second rule, 100 callers
reconnecting in bursts left 20 MiB of free heap resident after each burst and the RSS of the soak's
gateway climbing by steps (bench/reports/churn.md). A trim takes 2 to 10 ms there, on the event
loop; once per interval that is well under 0.1 % of its time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable

from earshot import metrics

log = logging.getLogger(__name__)

#: The least time between two releases while streams are still live.
RELEASE_INTERVAL_SECONDS = 30.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim): nothing to give back this way
    return trim


def release_freed_memory() -> bool:
    """Ask the C allocator to return its free heap memory; False where it cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class Releaser:
    """Decides, as each stream ends, whether to give freed memory back now (see the module)."""

    def __init__(
        self,
        gateway: str,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Release for ``gateway``'s streams at most every ``interval`` s while some are live.

        Args:
            gateway: the gateway's metric label.
            interval: :data:`RELEASE_INTERVAL_SECONDS` unless given.
            clock: monotonic seconds (tests pass their own).
        """
        self._interval = RELEASE_INTERVAL_SECONDS if interval is None else interval
        self._clock = clock
        self._last = clock()
        self._released = metrics.MEMORY_RELEASES.labels(gateway)

    def stream_ended(self, streams_left: int) -> bool:
        """A stream ended and ``streams_left`` are still live; True when memory was given back."""
        now = self._clock()
        if streams_left and now - self._last < self._interval:
            return False
        self._last = now
        if not release_freed_memory():
            return False
        self._released.inc()
        return True
