"""Where a gateway's Python heap grows with the sessions it has served (tracemalloc).

Runs the gateway in this process (tiny Paraformer, the stores ``--partials`` and ``--segments``
name, embedded persister, a spool of its own) and streams rounds of short sessions through it:
each round ``--sessions`` concurrent callers, each with a new session id, send the bundled A-law
sample unpaced with trailing silence and wait for the last final. After the first round (warm-up:
model, pools, caches) the heap is snapshotted, and again after the last round; the report lists
the source lines whose live allocations grew most between the two, and the growth per session
served. A line that keeps growing with the number of sessions is a leak; a line that grew once
(a cache reaching its size) is not, which a second run with more rounds tells apart.

tracemalloc sees Python allocations only: native memory (ONNX Runtime, the allocator's arenas) is
visible in the RSS figures alone, which this run also prints.

Usage: ``python -m bench.heap_growth [--rounds 6] [--sessions 20]``; writes
``bench/reports/heap_growth.md`` (``--report`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import REGISTRY

from bench import procstats
from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.gateways.g711 import client, serving
from earshot.settings import Settings
from tests.gateway import running_gateway, session_url

REPORT = Path(__file__).parent / "reports" / "heap_growth.md"
TOP = 15


async def _round(base: str, engine: str, number: int, sessions: int, frames: list[bytes]) -> int:
    async def one(index: int) -> int:
        url = session_url(base, f"heap-{number}-{index}")
        result = await client.stream(url, frames, frame_seconds=0.02, speed=0, linger=10.0)
        return len(result.finals)

    told = sum(await asyncio.gather(*(one(i) for i in range(sessions))))
    # A caller may leave before the gateway has read all it sent: wait until every stream ended.
    labels = {"gateway": "g711", "engine": engine}
    while REGISTRY.get_sample_value("earshot_active_streams", labels):  # noqa: ASYNC110 (a gauge)
        await asyncio.sleep(0.2)
    return told


def _heap() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )


async def _run(args: argparse.Namespace, workdir: Path) -> list[str]:
    settings = Settings(
        cache_dir=args.cache_dir,
        partials_url=args.partials,
        segments_url=args.segments or f"sqlite:///{workdir / 'seg.db'}",
        spool_dir=workdir / "spool",
    )
    audio = streaming.with_trailing_silence(demoing.sample_audio(), Codec.ALAW, 8000)
    frames = client.frames_of(audio, codec=Codec.ALAW, rate=8000)
    pid = os.getpid()
    async with (
        serving.open_services(settings) as services,
        running_gateway(settings, services) as base,
    ):
        engine = services.recognizer.name
        finals = await _round(base, engine, 0, args.sessions, frames)
        before, rss_before = _heap(), procstats.read(pid).rss_bytes
        started = time.monotonic()
        for number in range(1, args.rounds):
            finals += await _round(base, engine, number, args.sessions, frames)
        seconds = time.monotonic() - started
        after, rss_after = _heap(), procstats.read(pid).rss_bytes
    served = (args.rounds - 1) * args.sessions
    stats = after.compare_to(before, "lineno")
    grown = sum(s.size_diff for s in stats)
    lines = [
        f"Sessions served between the snapshots: {served} ({args.rounds - 1} rounds of "
        f"{args.sessions}, {seconds:.0f} s); finals told in all rounds: {finals}.",
        f"Python heap growth: {grown / 1024:.1f} KiB in all, "
        f"{grown / max(served, 1):.0f} bytes per session. "
        f"RSS: {rss_before / 2**20:.1f} MiB after the warm-up round, "
        f"{rss_after / 2**20:.1f} MiB at the end.",
        "",
        "| growth KiB | new blocks | bytes per session | where |",
        "|---|---|---|---|",
    ]
    for stat in stats[:TOP]:
        frame = stat.traceback[0]
        lines.append(
            f"| {stat.size_diff / 1024:.1f} | {stat.count_diff} | "
            f"{stat.size_diff / max(served, 1):.0f} | `{frame.filename}:{frame.lineno}` |"
        )
    return lines


def main(argv: list[str]) -> int:
    """Run, print the table and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.heap_growth")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, the first one a warm-up")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions per round")
    parser.add_argument("--partials", default="memory://", help="partial store URL")
    parser.add_argument("--segments", default="", help="segment store URL (default: SQLite)")
    parser.add_argument("--cache-dir", type=Path, default=Settings().cache_dir)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="earshot-heap-") as tmp:
        lines = asyncio.run(_run(args, Path(tmp)))
    header = [
        "# heap growth: a gateway's Python heap after N sessions (tracemalloc)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Command: `python -m bench.heap_growth {' '.join(argv)}`. Gateway in process (tiny "
        f"Paraformer, partials {args.partials}, segments {args.segments or 'SQLite'}, embedded "
        "persister); callers unpaced, one new session id each.",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    args.report.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
