"""Giving freed heap memory back (earshot.gateways.g711.releasing)."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY

from earshot.gateways.g711 import releasing


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_freed_small_allocations_are_given_back_to_the_system() -> None:
    # Blocks of a few KiB come from the heap (not mmap); one still in use above them keeps glibc
    # from shrinking the heap by itself, as in a gateway whose streams closed.
    blocks = [bytearray(4000) for _ in range(50_000)]
    pinned = bytearray(4000)
    held = resident_bytes()
    del blocks
    assert resident_bytes() > held - 50 * 1024 * 1024, "glibc gave it back unasked"
    assert releasing.release_freed_memory()
    assert resident_bytes() < held - 100 * 1024 * 1024
    del pinned


class Clock:
    """Monotonic seconds that the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def releases(gateway: str) -> float:
    return REGISTRY.get_sample_value("earshot_memory_releases_total", {"gateway": gateway}) or 0.0


def test_a_gateway_never_without_a_stream_gives_memory_back_once_per_interval() -> None:
    clock = Clock()
    releaser = releasing.Releaser("unit-interval", interval=30.0, clock=clock)
    released = []
    for second in range(1, 101):  # a stream ends every second; five are always still live
        clock.now = 1000.0 + second
        if releaser.stream_ended(streams_left=5):
            released.append(second)
    assert released == [30, 60, 90]
    assert releases("unit-interval") == 3


def test_the_last_stream_ending_gives_memory_back_at_once() -> None:
    clock = Clock()
    releaser = releasing.Releaser("unit-last", interval=30.0, clock=clock)
    clock.now += 1.0
    assert not releaser.stream_ended(streams_left=1)
    assert releaser.stream_ended(streams_left=0)
    assert releaser.stream_ended(streams_left=0)
    assert releases("unit-last") == 2
