"""Connection churn against one gateway process: does its memory come back, or climb per cycle?

Starts ``earshot serve`` (tiny random-weight Paraformer, embedded persister on SQLite, memory
partials, a private spool) through :mod:`bench.gateway_probe`, then runs ``--cycles`` cycles. In
each, ``--streams`` callers connect at once (within a second, as the soak's callers reconnect after
a refusal), stream 4 to ``--seconds`` s of the bundled sample in real time (``--speed`` times
faster: a gateway that falls behind, as in the soak under load), and end: every other
one closes its connection, the rest drop it without a close frame. ``--anchors`` more callers stay
connected through all cycles, so that the gateway never is without a stream (in the soak it never
is). After each cycle, once the gateway holds only the anchors' streams, its RSS (and anonymous
memory, from ``/proc/<pid>/smaps_rollup``), glibc's own accounts and the number of live per-stream
objects are sampled (see :mod:`bench.gateway_probe`).

RSS that settles after a few cycles is a high-water mark; RSS that climbs by about the same step
in every cycle is a leak, and the live-object and heap columns say whether in Python or below it.

Usage: ``python -m bench.churn [--cycles 12] [--streams 100] [--anchors 5] [--seconds 10]
[--env NAME=VALUE ...] [--label TEXT] [--append]``; writes ``bench/reports/churn.md``
(``--report`` to write elsewhere; ``--append`` adds this run's section to it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench.soak import Gateway
from tests.persister import speech_frames
from tests.servers import free_port

REPORT = Path(__file__).parent / "reports" / "churn.md"
FRAME_SECONDS = 0.02
SHOWN_OBJECTS = ("Transcription", "_Occupant", "WebSocket", "_Work", "Task")


@dataclass(frozen=True)
class Sample:
    """The gateway after one cycle."""

    cycle: int
    connections: int
    rss: int
    anonymous: int
    probe: dict[str, object]
    load: float


def _kib(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class ProbedGateway(Gateway):
    """``python -m bench.gateway_probe`` on a free port, with its probe file."""

    module = ("bench.gateway_probe",)

    def __init__(self, workdir: Path, extra_env: dict[str, str]) -> None:
        self.probe_out = workdir / "probe.json"
        env = {
            **os.environ,
            "EARSHOT_DEMO_MODEL": "true",
            "EARSHOT_SPOOL_DIR": str(workdir / "spool"),
            "EARSHOT_SEGMENTS_URL": f"sqlite:///{workdir / 'segments.sqlite3'}",
            "EARSHOT_PARTIALS_URL": "memory://",
            "EARSHOT_LOG_LEVEL": "warning",
            "EARSHOT_PROBE_OUT": str(self.probe_out),
            **extra_env,
        }
        super().__init__(workdir, env, free_port())

    async def active_streams(self) -> float:
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("earshot_active_streams{")
        )

    async def probe(self) -> dict[str, object]:
        assert self.process is not None
        self.probe_out.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(600):
            if self.probe_out.exists():
                result: dict[str, object] = json.loads(self.probe_out.read_text())
                return result
            await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not answer its probe within 30 s")

    def memory(self) -> tuple[int, int]:
        """RSS and anonymous resident memory, bytes."""
        assert self.process is not None
        proc = Path(f"/proc/{self.process.pid}")
        return _kib(proc / "status", "VmRSS"), _kib(proc / "smaps_rollup", "Anonymous")


async def stream(
    url: str,
    frames: list[bytes],
    seconds: float,
    *,
    drop: bool,
    until: asyncio.Event | None,
    speed: float = 1.0,
) -> int:
    """One connection: frames at ``speed`` times real time for ``seconds`` of audio (or until
    ``until``), then close or drop.

    Returns 1 when it connected, else 0.
    """
    try:
        async with connect(url, open_timeout=10, close_timeout=5, ping_interval=None) as ws:
            reading = asyncio.create_task(_read(ws))
            try:
                await _send(ws, frames, seconds, until, speed)
            finally:
                if drop:
                    ws.transport.abort()
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            return 1
    except (ConnectionClosed, OSError, InvalidHandshake, TimeoutError):
        return 0


async def _read(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _send(
    ws: ClientConnection,
    frames: list[bytes],
    seconds: float,
    until: asyncio.Event | None,
    speed: float,
) -> None:
    start = time.monotonic()
    sent = 0
    while (until is None and sent * FRAME_SECONDS < seconds) or (until and not until.is_set()):
        await ws.send(frames[sent % len(frames)])
        sent += 1
        delay = start + sent * FRAME_SECONDS / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def churn(args: argparse.Namespace, workdir: Path) -> list[Sample]:
    extra = dict(item.split("=", 1) for item in args.env)
    gateway = ProbedGateway(workdir, extra)
    frames = speech_frames()
    samples: list[Sample] = []
    await gateway.start()
    base = f"ws://127.0.0.1:{gateway.port}/ws/transcribe"
    stopping = asyncio.Event()
    anchors = [
        asyncio.create_task(stream(f"{base}/anchor-{i}", frames, 0, drop=False, until=stopping))
        for i in range(args.anchors)
    ]
    try:
        connections = 0
        await _settle(gateway, args.anchors)
        samples.append(await _sample(gateway, 0, connections))
        for cycle in range(1, args.cycles + 1):
            connections += await _cycle(args, base, frames, cycle)
            await _settle(gateway, args.anchors)
            samples.append(await _sample(gateway, cycle, connections))
            print(_row(samples[-1]), flush=True)
    finally:
        stopping.set()
        await asyncio.gather(*anchors, return_exceptions=True)
        await gateway.stop()
    return samples


async def _cycle(args: argparse.Namespace, base: str, frames: list[bytes], cycle: int) -> int:
    async def one(index: int) -> int:
        await asyncio.sleep((index % 10) / 10)
        seconds = 4 + (index * 7 + cycle) % max(1, int(args.seconds) - 3)
        url = f"{base}/churn-{index:03d}"
        return await stream(url, frames, seconds, drop=index % 2 == 1, until=None, speed=args.speed)

    return sum(await asyncio.gather(*(one(i) for i in range(args.streams))))


async def _settle(gateway: ProbedGateway, anchors: int) -> None:
    """Wait until the gateway holds only the anchors' streams (their last segments stored)."""
    for _ in range(300):
        if await gateway.active_streams() <= anchors:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def _sample(gateway: ProbedGateway, cycle: int, connections: int) -> Sample:
    probe = await gateway.probe()
    rss, anonymous = gateway.memory()
    return Sample(cycle, connections, rss, anonymous, probe, os.getloadavg()[0])


HEADER = (
    "| cycle | connections | RSS MiB | anon MiB | malloc in use MiB | malloc free MiB "
    "| mmapped MiB | arenas | obmalloc arenas MiB | obmalloc in use MiB | threads | "
    + " | ".join(SHOWN_OBJECTS)
    + " | load |"
)


def _row(s: Sample) -> str:
    m: dict[str, Any] = s.probe["malloc"]  # type: ignore[assignment]
    ob: dict[str, int] = s.probe["obmalloc"]  # type: ignore[assignment]
    live: dict[str, int] = s.probe["live"]  # type: ignore[assignment]
    mib = 2**20
    return (
        f"| {s.cycle} | {s.connections} | {s.rss / mib:.1f} | {s.anonymous / mib:.1f} | "
        f"{m['in_use_bytes'] / mib:.1f} | {m['free_bytes'] / mib:.1f} | "
        f"{m['mmapped_bytes'] / mib:.1f} | {m['arenas']} | {ob['arena_bytes'] / mib:.0f} | "
        f"{ob['in_use_bytes'] / mib:.1f} | {s.probe['threads']} | "
        + " | ".join(str(live[name]) for name in SHOWN_OBJECTS)
        + f" | {s.load:.1f} |"
        + _trimmed(s.probe)
    )


def _trimmed(probe: dict[str, object]) -> str:
    """RSS before and after the probe's malloc_trim(0), and its duration, when it ran one."""
    trim: dict[str, float] | None = probe.get("trim")  # type: ignore[assignment]
    if trim is None:
        return ""
    return (
        f" trim: {trim['rss_before'] / 2**20:.1f} -> {trim['rss_after'] / 2**20:.1f} MiB "
        f"in {trim['ms']:.1f} ms |"
    )


def report(args: argparse.Namespace, samples: list[Sample]) -> str:
    first, settled, last = samples[0], samples[min(3, len(samples) - 1)], samples[-1]
    mib = 2**20
    per_cycle = (last.rss - settled.rss) / max(1, last.cycle - settled.cycle)
    label = f" ({args.label})" if args.label else ""
    arenas: list[list[int]] = last.probe["malloc"]["per_arena"]  # type: ignore[index]
    biggest = sorted(arenas, key=lambda a: -a[1])[:4]
    return "\n".join(
        [
            f"## {args.cycles} cycles of {args.streams} streams, {args.anchors} anchors{label}",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; load average (1 min) {first.load:.1f} at the start, "
            f"{last.load:.1f} at the end. Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
            f"Command: `python -m bench.churn --cycles {args.cycles} --streams {args.streams} "
            f"--anchors {args.anchors} --seconds {args.seconds:g} --speed {args.speed:g}"
            + "".join(f" --env {item}" for item in args.env)
            + "`.",
            "",
            HEADER,
            "|" + "---|" * (HEADER.count("|") - 1),
            *(_row(s) for s in samples),
            "",
            f"RSS {first.rss / mib:.1f} MiB before the first cycle, {settled.rss / mib:.1f} "
            f"after cycle {settled.cycle}, {last.rss / mib:.1f} after cycle {last.cycle}: "
            f"{per_cycle / mib:+.2f} MiB per cycle from cycle {settled.cycle} on. The largest "
            "arenas after the last cycle (number: MiB from the system, MiB of it free): "
            + ", ".join(
                f"{nr}: {system / mib:.1f}, {free / mib:.1f}" for nr, system, free in biggest
            )
            + ".",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--anchors", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="longest stream of a cycle")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="the churning callers' pace (1: real time)"
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the gateway")
    parser.add_argument("--label", default="")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--append", action="store_true")
    parser.add_argument("--keep", type=Path, help="a directory to keep the gateway's files in")
    args = parser.parse_args()
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="earshot-churn-") as temporary:
        workdir = args.keep or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        samples = asyncio.run(churn(args, workdir))
    text = report(args, samples)
    print(text)
    if args.append and args.report.exists():
        text = args.report.read_text() + "\n" + text
    else:
        text = (
            "# churn: a gateway's memory through cycles of connection churn\n\n"
            + (__doc__ or "").split("\n\n", 1)[1].split("\n\nUsage")[0]
            + "\n\n"
            + text
        )
    args.report.write_text(text)


if __name__ == "__main__":
    main()
