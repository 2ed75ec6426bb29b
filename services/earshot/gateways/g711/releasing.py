"""Giving freed heap memory back to the operating system once a gateway has no stream left.

glibc keeps memory that Python and numpy freed in its heaps for reuse; after many connections
closed, a gateway's RSS stays near its peak although nothing uses that memory
(bench/reports/idle_connections.md). ``malloc_trim(0)`` returns the free parts of the heaps. It can
hold the allocator's locks for some milliseconds, so the gateway calls it only when its last
stream has ended, when nothing waits for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


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
