"""Giving freed heap memory back (earshot.gateways.g711.releasing)."""

from __future__ import annotations

import os

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
