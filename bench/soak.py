"""Soak: real-time streams for minutes while the stores and both processes fail on a schedule.

Starts a private MariaDB and Redis (as the integration tests do), ``python -m earshot serve`` with
the persister as a sidecar (``python -m earshot persister`` on the same spool), and N callers in
this process. Each caller streams the bundled speech sample (20 ms A-law frames, real time, over and
over) as one session id and reconnects with the same id whenever its connection ends. Faults, at
fixed fractions of the run:

* 15%: MariaDB stopped for 20 s, then started again;
* 35%: Redis restarted (SIGTERM, start);
* 55%: the persister SIGKILLed and started again;
* 75%: the gateway SIGKILLed and started again on the same port (callers reconnect).

At the end the callers close, the persister drains the spool, and every final a caller was told
(session, seq, text) is looked up in MariaDB. Every 5 s the gateway's and the persister's RSS, the
spool's size on disk and the persister's drain lag (``earshot_persister_oldest_unacked_age_seconds``)
are sampled. Writes ``bench/reports/soak.md`` (``--report`` to write elsewhere).

Usage: ``python -m bench.soak [--minutes 10] [--streams 100] [--call-seconds S]`` (``--minutes 1``
to try it out; ``--call-seconds``: calls that end after S to 2S s, and connection churn with them).
The gateway and the persister run with ``MALLOC_ARENA_MAX=2``, as services/Dockerfile sets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench import procstats
from earshot.persistence import spool
from tests.persister import PersisterProcess, rows, speech_frames
from tests.servers import MariaDbServer, RedisServer, free_port

REPORT = Path(__file__).parent / "reports" / "soak.md"
FRAME_SECONDS = 0.02
SAMPLE_SECONDS = 5.0
MYSQL_OUTAGE_SECONDS = 20.0


@dataclass
class Told:
    """What the callers heard."""

    finals: dict[tuple[str, int], str] = field(default_factory=dict)
    told_twice: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ends: Counter[str] = field(default_factory=Counter)
    connections: int = 0

    def final(self, session: str, seq: int, text: str) -> None:
        if (session, seq) in self.finals:
            self.told_twice += 1
        self.finals[(session, seq)] = text


@dataclass
class Sample:
    """One 5-second sample."""

    at: float
    gateway_pid: int | None
    gateway_rss: int
    persister_pid: int | None
    persister_rss: int
    spool_bytes: int
    drain_lag: float
    load: float


class Gateway:
    """``python -m earshot serve`` (or another ``module`` that serves as it does) on a fixed port,
    restartable."""

    module: tuple[str, ...] = ("earshot", "serve")

    def __init__(self, workdir: Path, env: dict[str, str], port: int) -> None:
        self.env = {**env, "EARSHOT_HOST": "127.0.0.1", "EARSHOT_PORT": str(port)}
        self.port = port
        self.log_path = workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", *self.module],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        self.process = await asyncio.to_thread(self._spawn)
        async with httpx.AsyncClient(timeout=2.0) as client:
            for _ in range(1200):
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited:\n{self.log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/health")).is_success:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("gateway did not answer /health within 120 s")

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.process.wait, 60)


async def caller(
    index: int,
    port: int,
    frames: list[bytes],
    told: Told,
    stopping: asyncio.Event,
    call_seconds: float = 0.0,
) -> None:
    """Stream in real time as one session, reconnecting until ``stopping`` is set; with
    ``call_seconds``, each call ends after ``call_seconds`` to twice that (by the caller's index)
    and the caller calls again."""
    session = f"soak-{index:03d}"
    url = f"ws://127.0.0.1:{port}/ws/transcribe/{session}"
    calls = 0
    while not stopping.is_set():
        calls += 1
        hang_up = asyncio.Event()
        length = call_seconds * (1 + ((index * 7 + calls) % 11) / 10)  # S, 1.1S, ... 2S
        timer = asyncio.get_running_loop().call_later(length, hang_up.set) if call_seconds else None
        try:
            # No keepalive pings from the callers: a busy load generator must not end streams
            # itself (the gateway's own pings still do when it cannot answer in time).
            async with connect(url, open_timeout=10, close_timeout=10, ping_interval=None) as ws:
                told.connections += 1
                listening = asyncio.create_task(listen(ws, session, told))
                try:
                    await send_real_time(ws, frames, stopping, hang_up)
                finally:
                    await ws.close()
                    await listening
        except ConnectionClosed as exc:
            told.ends[_closed(exc)] += 1
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            told.ends[f"not connected ({type(exc).__name__})"] += 1
        else:
            if hang_up.is_set() and not stopping.is_set():
                told.ends["the caller hung up (1000)"] += 1
        finally:
            if timer is not None:
                timer.cancel()
        if not stopping.is_set():
            await asyncio.sleep(1.0 + (index % 10) / 10)


def _closed(exc: ConnectionClosed) -> str:
    """How a connection ended, as the close frames say (sent by the server or by this caller)."""
    if exc.rcvd is not None:
        return f"closed by the gateway ({exc.rcvd.code} {exc.rcvd.reason})".replace(" )", ")")
    if exc.sent is not None:
        return f"closed by the caller ({exc.sent.code} {exc.sent.reason})".replace(" )", ")")
    return "connection dropped without a close frame"


async def send_real_time(
    ws: ClientConnection, frames: list[bytes], stopping: asyncio.Event, hang_up: asyncio.Event
) -> None:
    start = time.monotonic()
    sent = 0
    while not stopping.is_set():
        for frame in frames:
            await ws.send(frame)
            sent += 1
            delay = start + sent * FRAME_SECONDS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stopping.is_set() or hang_up.is_set():
                return


async def listen(ws: ClientConnection, session: str, told: Told) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "final":
                told.final(session, int(message["seq"]), str(message["text"]))
            elif message["type"] == "error":
                told.errors[str(message["code"])] += 1
                await ws.close()


def spool_bytes(spool_dir: Path) -> int:
    total = 0
    for root, _, files in os.walk(spool_dir):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).stat().st_size
    return total


async def drain_lag(persister: PersisterProcess) -> float:
    try:
        text = (await persister.get("/metrics")).text
    except httpx.HTTPError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("earshot_persister_oldest_unacked_age_seconds "):
            return float(line.split()[1])
    return float("nan")


def rss(process_pid: int | None) -> int:
    if process_pid is None:
        return 0
    try:
        return procstats.read(process_pid).rss_bytes
    except (FileNotFoundError, ProcessLookupError):
        return 0


async def sampler(
    gateway: Gateway,
    persister: PersisterProcess,
    spool_dir: Path,
    samples: list[Sample],
    started: float,
) -> None:
    while True:
        gateway_pid = gateway.process.pid if gateway.process else None
        persister_pid = persister._process.pid if persister._process else None
        samples.append(
            Sample(
                at=time.monotonic() - started,
                gateway_pid=gateway_pid,
                gateway_rss=rss(gateway_pid),
                persister_pid=persister_pid,
                persister_rss=rss(persister_pid),
                spool_bytes=spool_bytes(spool_dir),
                drain_lag=await drain_lag(persister),
                load=os.getloadavg()[0],
            )
        )
        await asyncio.sleep(SAMPLE_SECONDS)


async def faults(
    seconds: float,
    *,
    mariadb: MariaDbServer,
    redis: RedisServer,
    persister: PersisterProcess,
    gateway: Gateway,
    log: list[str],
    started: float,
) -> None:
    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, started + fraction * seconds - time.monotonic()))

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - started:6.1f} s: {what}")

    await at(0.15)
    note("MariaDB stopped")
    await asyncio.to_thread(mariadb.stop)
    await asyncio.sleep(MYSQL_OUTAGE_SECONDS)
    await asyncio.to_thread(mariadb.start)
    note("MariaDB started again")
    await at(0.35)
    note("Redis restarted")
    await asyncio.to_thread(redis.stop)
    await asyncio.to_thread(redis.start)
    await at(0.55)
    note("persister SIGKILLed")
    await persister.stop(hard=True)
    await persister.start()
    note("persister started again")
    await at(0.75)
    note("gateway SIGKILLed")
    gateway.kill()
    await gateway.start()
    note("gateway started again")


async def stored_finals(mysql_url: str) -> dict[tuple[str, int], str]:
    found = await rows(mysql_url, "SELECT session_id, segment_seq, content FROM segments")
    return {(str(s), int(q)): str(c) for s, q, c in found}  # type: ignore[call-overload]


async def soak(
    minutes: float, streams: int, workdir: Path, call_seconds: float = 0.0
) -> tuple[str, bool]:
    seconds = minutes * 60
    mariadb = MariaDbServer(workdir / "mariadb").start()
    redis = RedisServer(workdir / "redis").start()
    mysql_url = mariadb.create_database("soak")
    spool_dir = workdir / "spool"
    persister = PersisterProcess(
        workdir / "persister", spool_dir=spool_dir, segments_url=mysql_url, partials_url=redis.url
    )
    # As the image sets it for every role (services/Dockerfile, bench/reports/churn.md).
    persister.env["MALLOC_ARENA_MAX"] = "2"
    env = {
        **os.environ,
        "EARSHOT_SPOOL_DIR": str(spool_dir),
        "EARSHOT_SEGMENTS_URL": mysql_url,
        "EARSHOT_PARTIALS_URL": redis.url,
        "EARSHOT_PERSISTER": "sidecar",
        "EARSHOT_LOG_LEVEL": "info",
        "EARSHOT_DEMO_MODEL": "true",
        "MALLOC_ARENA_MAX": "2",
    }
    gateway = Gateway(workdir, env, free_port())
    told, samples, log = Told(), list[Sample](), list[str]()
    try:
        await persister.start()
        await gateway.start()
        frames = speech_frames()
        stopping = asyncio.Event()
        started = time.monotonic()
        sampling = asyncio.create_task(sampler(gateway, persister, spool_dir, samples, started))
        callers = [
            asyncio.create_task(caller(i, gateway.port, frames, told, stopping, call_seconds))
            for i in range(streams)
        ]
        try:
            await faults(
                seconds,
                mariadb=mariadb,
                redis=redis,
                persister=persister,
                gateway=gateway,
                log=log,
                started=started,
            )
            await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
            stopping.set()
            await asyncio.wait_for(asyncio.gather(*callers), 60)
            log.append(f"{time.monotonic() - started:6.1f} s: callers closed")
            # SIGTERM seals the gateway's stream; the persister then drains it and removes it.
            await gateway.stop()
            for _ in range(360):
                if not spool.streams(spool_dir):
                    break
                await asyncio.sleep(0.5)
            left = "" if not spool.streams(spool_dir) else " (NOT drained after 180 s)"
            log.append(f"{time.monotonic() - started:6.1f} s: gateway stopped, spool drained{left}")
        finally:
            stopping.set()
            for task in [sampling, *callers]:
                task.cancel()
            await asyncio.gather(sampling, *callers, return_exceptions=True)
        stored = await stored_finals(mysql_url)
    finally:
        gateway.kill()
        await persister.stop()
        redis.close()
        mariadb.close()
    return report(minutes, streams, told, stored, samples, log, call_seconds)


def report(
    minutes: float,
    streams: int,
    told: Told,
    stored: dict[tuple[str, int], str],
    samples: list[Sample],
    log: list[str],
    call_seconds: float = 0.0,
) -> tuple[str, bool]:
    calls = f" --call-seconds {call_seconds:g}" if call_seconds else ""
    same = sum(1 for key, text in told.finals.items() if stored.get(key) == text)
    missing = sum(1 for key in told.finals if key not in stored)
    other_text = len(told.finals) - same - missing
    untold = len(set(stored) - set(told.finals))
    gaps = 0
    for session in {s for s, _ in stored}:
        seqs = sorted(q for s, q in stored if s == session)
        gaps += seqs[-1] - len(seqs)
    ok = missing == 0 and other_text == 0 and told.told_twice == 0 and gaps == 0
    lines = [
        "# soak: real-time streams with MariaDB, Redis, persister and gateway failures",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average (1 min) median "
        f"{statistics.median(s.load for s in samples) if samples else float('nan'):.1f} while it "
        f"ran; Python {platform.python_version()}. "
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Command: `python -m bench.soak --minutes {minutes:g} --streams {streams}{calls}`. "
        "Gateway `earshot serve` (tiny random-weight Paraformer, in process) with the persister "
        "as a sidecar process on the same spool; private MariaDB and Redis; the callers in the "
        "bench process, 20 ms A-law frames in real time, reconnecting with the same session id"
        + (
            f"; each call hung up after {call_seconds:g} to {2 * call_seconds:g} s and called again"
            if call_seconds
            else ""
        )
        + ". The gateway and the persister run with MALLOC_ARENA_MAX=2, as the image sets it.",
        "",
        "## Finals",
        "",
        "| told | told and stored with the same text | told, not stored | stored with another "
        "text | seq told twice | seq gaps in the store | stored, never told (streams ending) |",
        "|---|---|---|---|---|---|---|",
        f"| {len(told.finals)} | {same} | {missing} | {other_text} | {told.told_twice} | {gaps} "
        f"| {untold} |",
        "",
        f"Verdict: {'every final told is stored exactly as told' if ok else 'FINALS LOST'}. "
        f"Connections opened (served or refused): {told.connections}; how they ended: "
        + (", ".join(f"{k} {v}" for k, v in sorted(told.ends.items())) or "none")
        + "; error messages received: "
        + (", ".join(f"{k} {v}" for k, v in sorted(told.errors.items())) or "none")
        + ".",
        "",
        "## Faults",
        "",
        *[f"- {line}" for line in log],
        "",
        "## Over time (median of the samples of each minute; samples every 5 s)",
        "",
        "| minute | gateway RSS MiB | persister RSS MiB | spool MiB (max) | drain lag s (max) |",
        "|---|---|---|---|---|",
    ]
    for minute in range(int(max((s.at for s in samples), default=0) // 60) + 1):
        window = [s for s in samples if minute * 60 <= s.at < (minute + 1) * 60]
        if not window:
            continue
        gw = [s.gateway_rss for s in window if s.gateway_rss]
        ps = [s.persister_rss for s in window if s.persister_rss]
        lags = [s.drain_lag for s in window if s.drain_lag == s.drain_lag]
        lines.append(
            f"| {minute} | {statistics.median(gw) / 2**20:.0f} | "
            f"{statistics.median(ps) / 2**20 if ps else 0:.0f} | "
            f"{max(s.spool_bytes for s in window) / 2**20:.2f} | "
            f"{max(lags) if lags else float('nan'):.1f} |"
        )
    high = max((s.spool_bytes for s in samples), default=0)
    lag = max((s.drain_lag for s in samples if s.drain_lag == s.drain_lag), default=0.0)
    flatness = rss_flatness(samples, "gateway") + rss_flatness(samples, "persister")
    ok = ok and bool(flatness) and all(f.flat for f in flatness)
    lines += [
        "",
        f"Spool high-water mark: {high / 2**20:.2f} MiB. Largest drain lag: {lag:.1f} s "
        "(drain lag is not measured while the persister is down: its /metrics is gone).",
        "",
        "## RSS: flat?",
        "",
        f"Per process (a SIGKILL starts a new one), the median RSS of its last "
        f"{FLAT_WINDOW_S:.0f} s against that of the {FLAT_WINDOW_S:.0f} s after its first "
        f"{WARMUP_S:.0f} s of warm-up; flat when it grew by at most {FLAT_GROWTH:.0%}.",
        "",
        f"A process that lived less than {WARMUP_S + 2 * FLAT_WINDOW_S:.0f} s is not judged.",
        "",
        "| process | lived s | baseline window s | RSS after warm-up MiB | RSS at the end MiB "
        "| growth MiB | growth | flat |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {f.name} | {f.lived:.0f} | {f.window[0]:.0f}-{f.window[1]:.0f} "
            f"| {f.early / 2**20:.1f} | {f.late / 2**20:.1f} | {(f.late - f.early) / 2**20:+.1f} "
            f"| {f.growth:+.1%} | {'yes' if f.flat else 'NO'} |"
            for f in flatness
        ],
        "",
    ]
    if not flatness:
        lines += ["No process lived long enough to judge.", ""]
    return "\n".join(lines), ok


#: RSS flatness: what counts as warm-up, how long a window is, and the growth still called flat.
#: With a 30 s warm-up the first processes' baseline (30 to 90 s) ends when the first fault of a
#: 10-minute soak begins (15 % of 600 s), so the faults' churn is judged, not taken as the baseline.
#: A process needs 150 s of samples to be judged: the gateway restarted at 75 % (450 s) of a
#: 10-minute soak falls just short.
WARMUP_S = 30.0
FLAT_WINDOW_S = 60.0
FLAT_GROWTH = 0.10


@dataclass
class Flatness:
    """One process's RSS after warm-up and at its end."""

    name: str
    lived: float
    #: the baseline window, seconds from the soak's start
    window: tuple[float, float]
    early: float
    late: float

    @property
    def growth(self) -> float:
        return self.late / self.early - 1

    @property
    def flat(self) -> bool:
        return self.growth <= FLAT_GROWTH


def rss_flatness(samples: list[Sample], role: Literal["gateway", "persister"]) -> list[Flatness]:
    """Each process of ``role`` that lived past warm-up and two windows, in the order they ran."""
    seen = [(s.at, *_process(s, role)) for s in samples]
    pids = dict.fromkeys(pid for _, pid, size in seen if pid and size)
    found: list[Flatness] = []
    for n, pid in enumerate(pids, 1):
        mine = [(at, size) for at, p, size in seen if p == pid and size]
        start, end = mine[0][0], mine[-1][0]
        if end - start < WARMUP_S + 2 * FLAT_WINDOW_S:
            continue
        warm = start + WARMUP_S
        early = [size for at, size in mine if warm <= at < warm + FLAT_WINDOW_S]
        late = [size for at, size in mine if at > end - FLAT_WINDOW_S]
        found.append(
            Flatness(
                f"{role} {n}",
                end - start,
                (warm, warm + FLAT_WINDOW_S),
                statistics.median(early),
                statistics.median(late),
            )
        )
    return found


def _process(sample: Sample, role: Literal["gateway", "persister"]) -> tuple[int | None, int]:
    """The pid and RSS of ``role`` in one sample."""
    if role == "gateway":
        return sample.gateway_pid, sample.gateway_rss
    return sample.persister_pid, sample.persister_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument(
        "--call-seconds",
        type=float,
        default=0.0,
        help="each call hangs up after this to twice this and calls again (0: calls last until "
        "the gateway ends them)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument(
        "--keep", type=Path, default=None, help="a directory to keep the servers' logs and data in"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="earshot-soak-") as temporary:
        workdir = args.keep or Path(temporary)
        text, ok = asyncio.run(soak(args.minutes, args.streams, workdir, args.call_seconds))
    print(text)
    args.report.write_text(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
