"""``earshot serve`` that answers SIGUSR1 with what its memory holds, for bench/churn.py.

Run as ``python -m bench.gateway_probe`` with the gateway's environment plus
``EARSHOT_PROBE_OUT`` (a file path). On SIGUSR1 (handled on the main thread, between two
bytecodes of the event loop) it writes one JSON object there:

* ``malloc``: glibc's ``mallinfo2()`` over all arenas (bytes in use, free in the heaps, mmapped)
  and the number of arenas ``malloc_info()`` lists;
* ``obmalloc``: Python's small-object allocator (``sys._debugmallocstats``): the bytes of its
  arenas (taken from the system by mmap, not counted by malloc) and the bytes in use in them;
* ``live``: how many objects of each per-stream type the garbage collector tracks;
* ``traced``: the bytes tracemalloc counts, when it runs (``PYTHONTRACEMALLOC=1``); the snapshot
  is then dumped next to ``EARSHOT_PROBE_OUT`` as ``<name>.<n>.snapshot``;
* ``trim``: with ``EARSHOT_PROBE_TRIM=1``, after all that, how long ``malloc_trim(0)`` took and
  the RSS before and after it (the process goes on trimmed).

Bench code: nothing of it ships in the gateway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import re
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

#: Objects that exist once per stream or connection while it lives.
PER_STREAM = (
    "Transcription",
    "_Occupant",
    "WebSocket",
    "BatchedStream",
    "_Work",
    "_Job",
    "OnlineStream",
    "Task",
    "ServerConnection",
    "WebSocketProtocol",
    "WebSocketsSansIOProtocol",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_LIBC.mallinfo2.restype = _MallInfo2
_LIBC.fopen.restype = ctypes.c_void_p
_LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_LIBC.fclose.argtypes = [ctypes.c_void_p]
_LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
_LIBC.malloc_trim.argtypes = [ctypes.c_size_t]


def malloc_stats() -> dict[str, object]:
    """glibc's view of the heap: sbrk'd and mmapped bytes, in use, free, and the arenas."""
    info = _LIBC.mallinfo2()
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        stream = _LIBC.fopen(out.name.encode(), b"w")
        _LIBC.malloc_info(0, stream)
        _LIBC.fclose(stream)
        xml = Path(out.name).read_text()
    heaps = re.findall(
        r'<heap nr="(\d+)">.*?<total type="rest" count="\d+" size="(\d+)"/>'
        r'.*?<system type="current" size="(\d+)"/>',
        xml,
        re.DOTALL,
    )
    return {
        # Per arena: bytes taken from the system and bytes free in it (0 is the main thread's).
        "per_arena": [[int(nr), int(system), int(free)] for nr, free, system in heaps],
        "heap_bytes": info.arena,
        "mmapped_bytes": info.hblkhd,
        "in_use_bytes": info.uordblks,
        "free_bytes": info.fordblks,
        "top_free_bytes": info.keepcost,
        "arenas": len(re.findall(r"<heap nr=", xml)),
    }


_taken = 0


def obmalloc_stats() -> dict[str, int]:
    """Python's small-object arenas: the bytes they hold and the bytes allocated in them."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as out:
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()

    def figure(label: str) -> int:
        found = re.search(rf"{re.escape(label)}\s*=\s*([\d,]+)", text)
        return int(found.group(1).replace(",", "")) if found else 0

    arenas = figure("# arenas allocated current")
    return {
        "arena_bytes": arenas * 1024 * 1024,
        "in_use_bytes": figure("# bytes in allocated blocks"),
    }


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _probe(_signum: int, _frame: FrameType | None) -> None:
    global _taken
    out = Path(os.environ["EARSHOT_PROBE_OUT"])
    gc.collect()
    names = Counter(type(o).__name__ for o in gc.get_objects())
    report: dict[str, object] = {
        "malloc": malloc_stats(),
        "obmalloc": obmalloc_stats(),
        "live": {name: names.get(name, 0) for name in PER_STREAM},
        "threads": len(os.listdir("/proc/self/task")),
    }
    if tracemalloc.is_tracing():
        report["traced"] = tracemalloc.get_traced_memory()[0]
        _taken += 1
        tracemalloc.take_snapshot().dump(str(out.with_suffix(f".{_taken}.snapshot")))
    if os.environ.get("EARSHOT_PROBE_TRIM") == "1":
        before = _rss()
        started = time.perf_counter()
        _LIBC.malloc_trim(0)
        report["trim"] = {
            "ms": (time.perf_counter() - started) * 1000,
            "rss_before": before,
            "rss_after": _rss(),
        }
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(report))
    partial.replace(out)


def main() -> None:
    """Install the probe and run ``earshot serve``."""
    from earshot.cli import main as earshot_main  # after the handler: start-up takes seconds

    signal.signal(signal.SIGUSR1, _probe)
    sys.argv = ["earshot", "serve"]
    earshot_main()


if __name__ == "__main__":
    main()
