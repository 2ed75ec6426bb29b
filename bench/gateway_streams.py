"""Concurrent real-time G.711 streams against one gateway (``earshot serve``), latency from cause.

The tiny Paraformer is deterministic, so the recogniser fed the same frames offline gives, for its
k-th reply, the index of the chunk that caused it: the earlier of the frame after which the model
could say it, each frame decoded on its own, and the frame after which the gateway's own pipeline
(frames held until they could complete a window, :mod:`earshot.audio.holding`) says it, so holding
can never make a reply look faster. Under load the k-th reply of every stream is timed from the
moment that chunk was sent (replies that differ from it are counted as mismatched and not timed);
one stream sent alone first checks the attribution live. For each N it reports:

* admitted and refused streams (refused: closed with 1013 at once, e.g. by the lag limit);
* reply latency p50/p95/p99/max, client side, chunk sent -> reply received, admitted streams;
* tail lag: the chunk that causes a stream's last reply sent -> that reply received (p99 over
  streams): how far behind real time a stream is when its caller stops;
* the gateway's own histogram ``earshot_reply_latency_seconds`` (chunk arrival -> reply sent),
  p50, with a sanity check: the client's p50 must not be below it;
* the load client's lateness p99: how late it sent frames against their real-time schedule;
* gateway CPU per stream (% of one core) and per stream-second of audio (ms), RSS per stream
  (with the persister's on the sidecar rows).

``--suite`` runs N = 50, 100, 150, 200, 300 (embedded stores), then the same N with the
persister as a sidecar process on private MariaDB and Redis, then ``--workers 2``, and writes
``bench/reports/gateway_streams.md``. ``--baseline DIR`` runs the gateway from another source tree
(e.g. the previous commit) back to back with this one, for CPU per stream-second before and after.

Usage: ``python -m bench.gateway_streams [--streams 50 100] [--seconds 20] [--workers 1]
[--sidecar] [--suite] [--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench import procstats
from bench.quantiles import percentiles_ms
from earshot.audio import codecs
from earshot.audio.codecs import Codec
from earshot.audio.holding import HeldAudio
from earshot.audio.resampling import StreamResampler
from earshot.cli.demoing import sample_audio
from earshot.engines import batching, paraformer, windowing
from earshot.gateways.g711 import client
from earshot.settings import Settings
from tests.persister import PersisterProcess
from tests.servers import MariaDbServer, RedisServer, free_port

FRAME_SECONDS = 0.02
REPORT = Path(__file__).parent / "reports" / "gateway_streams.md"
SUITE_STREAMS = (50, 100, 150, 200, 300)
WORKERS_STREAMS = (150, 200, 300)
# Streams start spread over this many seconds, so N connections do not arrive at one instant.
RAMP_SECONDS = 2.0
TAIL_WAIT_SECONDS = 10.0
SERVICES = Path(__file__).resolve().parent.parent / "services"


@dataclass(frozen=True, slots=True)
class Expected:
    """A reply of the calibration stream and the index of the chunk that caused it."""

    chunk: int
    kind: str
    text: str


@dataclass(slots=True)
class Load:
    """What the clients of one round saw."""

    latencies: list[float] = field(default_factory=list)
    tails: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    admitted: int = 0
    refused: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    mismatched: int = 0
    incomplete: int = 0
    other_closes: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One round's figures."""

    label: str
    streams: int
    load: Load
    server_p50_ms: float
    cpu_seconds: float
    wall_seconds: float
    audio_seconds: float
    rss_per_stream: float

    def cells(self) -> list[str]:
        p50, p95, p99, top = percentiles_ms(self.load.latencies, (50, 95, 99, 100))
        tail = percentiles_ms(self.load.tails, (99,))[0]
        late = percentiles_ms(self.load.lateness, (99,))[0]
        sane = (
            "n/a"
            if math.isnan(self.server_p50_ms)
            else ("ok" if p50 >= self.server_p50_ms else "NO")
        )
        admitted = max(1, self.load.admitted)
        return [
            self.label,
            str(self.streams),
            str(self.load.admitted),
            _refused(self.load),
            *(_ms(v) for v in (p50, p95, p99, top, tail)),
            f"{_ms(self.server_p50_ms)} ({sane})",
            _ms(late),
            f"{100 * self.cpu_seconds / self.wall_seconds / admitted:.2f}",
            f"{1000 * self.cpu_seconds / self.audio_seconds:.2f}" if self.audio_seconds else "n/a",
            f"{self.rss_per_stream / 2**20:.2f}",
            str(self.load.mismatched + self.load.incomplete),
            str(self.load.other_closes),
        ]


HEADER = [
    "gateway",
    "streams",
    "admitted",
    "refused",
    "p50 ms",
    "p95",
    "p99",
    "max",
    "tail lag p99",
    "server p50 (client ≥ server)",
    "client lateness p99",
    "CPU/stream %core",
    "CPU ms per stream-s",
    "RSS/stream MiB",
    "untimed streams",
    "other closes",
]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _refused(load: Load) -> str:
    if not load.refused:
        return "0"
    why = ", ".join(f"{code} {count}" for code, count in sorted(load.refusals.items()))
    return f"{load.refused} ({why})"


def replies_per_frame(frames: Sequence[bytes], count: int, cache_dir: Path) -> list[Expected]:
    """What the gateway's recogniser says for ``count`` frames, and after which frame, when every
    frame is decoded, resampled and handed to the model on its own (the earliest it can say it)."""
    decoder = paraformer.load_paraformer(Settings(cache_dir=cache_dir))
    stream = decoder.open()
    resampler = StreamResampler(8000, decoder.sample_rate)
    expected = []
    for index in range(count):
        audio = codecs.decode(frames[index % len(frames)], Codec.ALAW)
        decoder.accept(stream, resampler.process(audio))
        for said in decoder.decode([stream])[0]:
            if said.text:
                kind = "final" if said.is_final else "partial"
                expected.append(Expected(index, kind, said.text))
    return expected


async def replies_held(frames: Sequence[bytes], count: int, cache_dir: Path) -> list[Expected]:
    """The same through the gateway's own pipeline: frames held encoded until they could complete
    the model's next window (:class:`HeldAudio`), the recogniser's window and worker."""
    decoder = paraformer.load_paraformer(Settings(cache_dir=cache_dir))
    recognizer = batching.BatchingRecognizer(decoder, window=windowing.SHERPA_PARAFORMER)
    try:
        stream = recognizer.open_stream()
        held = HeldAudio(Codec.ALAW, StreamResampler(8000, decoder.sample_rate))
        expected = []
        for index in range(count):
            released = held.add(frames[index % len(frames)], stream.wanted_samples)
            if released is None:
                continue
            for said in await stream.accept(released.samples):
                if said.text:
                    kind = "final" if said.is_final else "partial"
                    expected.append(Expected(index, kind, said.text))
        await stream.finish()
    finally:
        await recognizer.aclose()
    return expected


async def replies_offline(frames: Sequence[bytes], count: int, cache_dir: Path) -> list[Expected]:
    """Each reply the gateway gives for ``count`` frames, and the chunk it is timed from: the
    earlier of the frame after which the model could say it on its own (:func:`replies_per_frame`)
    and the frame after which the gateway's pipeline says it (:func:`replies_held`). A reply is
    never timed from a chunk later than the one that let the gateway say it, so holding audio
    cannot make a figure look better than it is."""
    alone = replies_per_frame(frames, count, cache_dir)
    held = await replies_held(frames, count, cache_dir)
    if [(e.kind, e.text) for e in alone] != [(e.kind, e.text) for e in held]:
        raise SystemExit("the recogniser says different things when frames are held")
    moved = [h.chunk - a.chunk for a, h in zip(alone, held, strict=True) if h.chunk != a.chunk]
    print(
        f"-> holding frames moves {len(moved)} of {len(alone)} replies (by {sorted(set(moved))} "
        "frames, later if positive); each is timed from the earlier frame",
        flush=True,
    )
    return [a if a.chunk <= h.chunk else h for a, h in zip(alone, held, strict=True)]


async def calibrate(base: str, frames: Sequence[bytes], count: int) -> tuple[list[Expected], float]:
    """Send ``count`` frames in real time on one stream; each reply is caused by the last chunk
    sent before it arrived. Returns the replies and the longest reply delay seen (it must stay
    well below one frame for the attribution to hold)."""
    expected: list[Expected] = []
    sent_at: list[float] = []
    slowest = 0.0
    async with connect(f"{base}/ws/transcribe/calibration", max_size=None) as ws:

        async def receive() -> None:
            nonlocal slowest
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] in ("partial", "final") and sent_at:
                    slowest = max(slowest, time.perf_counter() - sent_at[-1])
                    expected.append(Expected(len(sent_at) - 1, message["type"], message["text"]))

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index * FRAME_SECONDS - time.perf_counter()))
            sent_at.append(time.perf_counter())
            await ws.send(frames[index % len(frames)])
        await asyncio.sleep(1.0)  # the last window's replies
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    return [e for e in expected if e.chunk < count], slowest


async def one_stream(
    url: str,
    frames: Sequence[bytes],
    count: int,
    expected: list[Expected],
    offset: float,
    load: Load,
) -> None:
    """A caller: real-time frames, each reply timed from the chunk the calibration says caused it."""
    await asyncio.sleep(offset)
    sent_at: list[float] = []
    replies = 0
    last_reply = 0.0
    matching = True
    all_in = asyncio.Event()
    try:
        ws = await connect(url, max_size=None, open_timeout=30)
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        print(f"   {url}: cannot connect: {exc!r}", flush=True)
        load.other_closes += 1
        return

    async def receive(ws: ClientConnection) -> str | None:
        nonlocal replies, last_reply, matching
        async for raw in ws:
            now = time.perf_counter()
            message = json.loads(raw)
            if message["type"] == "error":
                return str(message["code"])
            if replies < len(expected) and matching:
                want = expected[replies]
                if (want.kind, want.text) == (message["type"], message["text"]):
                    load.latencies.append(now - sent_at[want.chunk])
                    last_reply = now
                else:
                    matching = False
                    load.mismatched += 1
            replies += 1
            if replies >= len(expected):
                all_in.set()
        return None

    receiver = asyncio.create_task(receive(ws))
    refused: str | None = None
    try:
        start = time.perf_counter()
        for index in range(count):
            scheduled = start + index * FRAME_SECONDS
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if receiver.done():
                refused = receiver.result()
                break
            now = time.perf_counter()
            load.lateness.append(max(0.0, now - scheduled))
            sent_at.append(now)
            await ws.send(frames[index % len(frames)])
        if refused is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), TAIL_WAIT_SECONDS)
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
        with contextlib.suppress(ConnectionClosed):
            refused = await receiver if not receiver.cancelled() else refused
    if refused is not None and ws.close_code == 1013 and replies == 0:
        load.refused += 1
        load.refusals[refused] = load.refusals.get(refused, 0) + 1
        return
    if refused is not None:
        load.other_closes += 1
        return
    load.admitted += 1
    if all_in.is_set() and matching:
        load.tails.append(last_reply - sent_at[expected[-1].chunk])
    elif matching:
        load.incomplete += 1


class Gateway:
    """``earshot serve`` as a child process, from this source tree or another one."""

    def __init__(
        self, env: dict[str, str], source: Path = SERVICES, companions: Sequence[int] = ()
    ) -> None:
        """``companions``: processes counted with the gateway's CPU and RSS (its sidecar)."""
        self.port = free_port()
        self.companions = list(companions)
        self.env = {
            **env,
            "EARSHOT_PORT": str(self.port),
            "PYTHONPATH": os.pathsep.join([str(source), env.get("PYTHONPATH", "")]),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 (a long-lived child, not awaited)
            [sys.executable, "-m", "earshot", "serve"], env=self.env
        )
        deadline = time.monotonic() + 120
        async with httpx.AsyncClient() as h:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise SystemExit(f"earshot serve exited with {self.process.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await h.get(f"{self.http}/health")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise SystemExit("earshot serve did not become healthy in 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def pids(self) -> list[int]:
        """The gateway process, its descendants (the workers of ``--workers N``) and its
        companions."""
        assert self.process is not None
        found, todo = [], [self.process.pid, *self.companions]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                todo += [
                    int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                ]
        return found

    def cpu_seconds(self) -> float:
        return sum(procstats.read(p).cpu_seconds for p in self.pids())

    def rss_bytes(self) -> int:
        return sum(procstats.read(p).rss_bytes for p in self.pids())


async def reply_histogram(http: str) -> dict[float, float]:
    """The cumulative buckets of ``earshot_reply_latency_seconds`` (empty when the gateway has none)."""
    async with httpx.AsyncClient() as h:
        exposition = (await h.get(f"{http}/metrics")).text
    buckets: dict[float, float] = {}
    prefix = "earshot_reply_latency_seconds_bucket{"
    for line in exposition.splitlines():
        if line.startswith(prefix):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return dict(sorted(buckets.items()))


def bucket_median_ms(after: dict[float, float], before: dict[float, float]) -> float:
    """The median of a histogram's growth between two scrapes, interpolated within its bucket."""
    delta = {b: c - before.get(b, 0.0) for b, c in after.items()}
    total = delta.get(math.inf, 0.0)
    if not total:
        return math.nan
    rank = total / 2
    lower, lower_count = 0.0, 0.0
    for bound, count in delta.items():
        if count >= rank:
            if bound == math.inf:
                return lower * 1000
            span = count - lower_count
            return (lower + (bound - lower) * ((rank - lower_count) / span if span else 0.0)) * 1000
        lower, lower_count = bound, count
    return lower * 1000


async def settle(gateway: Gateway, scrapes: int = 6, limit: float = 120.0) -> float:
    """Wait until the previous round is over: no stream left and no lag (on every process the
    scrapes reach). Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        busy = False
        for _ in range(scrapes):
            async with httpx.AsyncClient() as h:  # a new connection: any worker may answer
                text = (await h.get(f"{gateway.http}/metrics")).text
            for line in text.splitlines():
                if line.startswith(("earshot_gateway_lag_seconds{", "earshot_active_streams{")):
                    busy = busy or float(line.rsplit(" ", 1)[1]) > 0.05
        if not busy:
            break
        await asyncio.sleep(1.0)
    return time.monotonic() - started


async def round_of(
    label: str,
    gateway: Gateway,
    n: int,
    seconds: float,
    frames: Sequence[bytes],
    expected: list[Expected],
    *,
    server_histogram: bool,
) -> Row:
    """N streams at once; the gateway's CPU, RSS and histogram around them."""
    count = int(seconds / FRAME_SECONDS)
    load = Load()
    before = await reply_histogram(gateway.http) if server_histogram else {}
    idle_rss = gateway.rss_bytes()
    cpu0, wall0 = gateway.cpu_seconds(), time.perf_counter()
    peak_rss = idle_rss

    async def sample_rss() -> None:
        nonlocal peak_rss
        while True:
            peak_rss = max(peak_rss, gateway.rss_bytes())
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    try:
        await asyncio.gather(
            *(
                one_stream(
                    f"{gateway.ws}/ws/transcribe/bench-{label.split()[0]}-{n}-{i}",
                    frames,
                    count,
                    expected,
                    i * RAMP_SECONDS / n,
                    load,
                )
                for i in range(n)
            )
        )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    cpu = gateway.cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    after = await reply_histogram(gateway.http) if server_histogram else {}
    row = Row(
        label=label,
        streams=n,
        load=load,
        server_p50_ms=bucket_median_ms(after, before) if server_histogram else math.nan,
        cpu_seconds=cpu,
        wall_seconds=wall,
        audio_seconds=load.admitted * seconds,
        rss_per_stream=max(0, peak_rss - idle_rss) / max(1, load.admitted),
    )
    print("   " + " | ".join(row.cells()), flush=True)
    return row


@contextlib.asynccontextmanager
async def running(
    env: dict[str, str], source: Path = SERVICES, companions: Sequence[int] = ()
) -> AsyncIterator[Gateway]:
    gateway = Gateway(env, source, companions)
    try:
        await gateway.start()
        yield gateway
    finally:
        gateway.stop()


@contextlib.asynccontextmanager
async def sidecar_stores(workdir: Path) -> AsyncIterator[tuple[dict[str, str], int]]:
    """Private MariaDB and Redis, and ``earshot persister`` on the gateway's spool: the gateway's
    settings for them and the persister's process id."""
    mariadb = MariaDbServer(workdir / "mariadb").start()
    redis = RedisServer(workdir / "redis").start()
    try:
        mysql_url = mariadb.create_database("bench")
        spool_dir = workdir / "spool"
        persister = PersisterProcess(
            workdir / "persister",
            spool_dir=spool_dir,
            segments_url=mysql_url,
            partials_url=redis.url,
        )
        await persister.start()
        try:
            yield (
                {
                    "EARSHOT_SPOOL_DIR": str(spool_dir),
                    "EARSHOT_SEGMENTS_URL": mysql_url,
                    "EARSHOT_PARTIALS_URL": redis.url,
                    "EARSHOT_PERSISTER": "sidecar",
                },
                persister.pid,
            )
        finally:
            await persister.stop()
    finally:
        redis.close()
        mariadb.close()


def base_env(workdir: Path, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "EARSHOT_CACHE_DIR": str(workdir / "cache"),
        "EARSHOT_SPOOL_DIR": str(workdir / "spool"),
        "EARSHOT_SEGMENTS_URL": f"sqlite:///{workdir / 'segments.db'}",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_LOG_LEVEL": "warning",
        "EARSHOT_MAX_CONNECTIONS": "1000",
        "EARSHOT_INFERENCE_QUEUE_SIZE": str(args.queue_size),
    }


async def series(
    label: str,
    env: dict[str, str],
    streams: Sequence[int],
    args: argparse.Namespace,
    frames: Sequence[bytes],
    *,
    source: Path = SERVICES,
    server_histogram: bool = True,
    companions: Sequence[int] = (),
) -> tuple[list[Row], str]:
    count = int(args.seconds / FRAME_SECONDS)
    expected = await replies_offline(frames, count, Path(env["EARSHOT_CACHE_DIR"]))
    rows = []
    async with running(env, source, companions) as gateway:
        await settle(gateway)
        live, slowest = await calibrate(gateway.ws, frames, count)
        if [(e.kind, e.text) for e in live] != [(e.kind, e.text) for e in expected]:
            raise SystemExit(f"{label}: the gateway's replies differ from the recogniser's")
        agree = sum(a.chunk == b.chunk for a, b in zip(live, expected, strict=True))
        check = (
            f"{label}: {len(expected)} replies per stream; a live one-stream run attributes "
            f"{agree} of them to the same chunk (slowest reply {slowest * 1000:.1f} ms)"
        )
        print("-> " + check, flush=True)
        await settle(gateway)
        for n in streams:
            row = await round_of(
                label, gateway, n, args.seconds, frames, expected, server_histogram=server_histogram
            )
            rows.append(row)
            waited = await settle(gateway)
            print(f"   (caught up after {waited:.0f} s)", flush=True)
    return rows, check


async def main_async(args: argparse.Namespace) -> str:
    frames = client.frames_of(sample_audio(), codec=Codec.ALAW, rate=8000, frame_ms=20)
    rows: list[Row] = []
    notes: list[str] = []
    loads = [f"before {procstats.loadavg()}"]
    with tempfile.TemporaryDirectory(prefix="earshot-bench-") as scratch:
        work = Path(scratch)
        plan: list[tuple[str, Sequence[int], dict[str, str], Path, bool]] = []
        embedded = base_env(work / "embedded", args)
        if args.suite:
            plan.append(("1 process", SUITE_STREAMS, embedded, SERVICES, True))
        else:
            workers = {"EARSHOT_WORKERS": str(args.workers)} if args.workers > 1 else {}
            label = f"{args.workers} workers" if args.workers > 1 else "1 process"
            plan.append((label, args.streams, {**embedded, **workers}, SERVICES, args.workers == 1))
        if args.baseline is not None:
            plan.insert(0, ("baseline", args.streams, base_env(work / "baseline", args),
                            args.baseline / "services", False))  # fmt: skip
        for label, streams, env, source, histogram in plan:
            made, check = await series(
                label, env, streams, args, frames, source=source, server_histogram=histogram
            )
            rows += made
            notes.append(check)
        if args.suite or args.sidecar:
            async with sidecar_stores(work / "sidecar") as (stores, persister):
                env = {**base_env(work / "sidecar", args), **stores}
                streams = SUITE_STREAMS if args.suite else args.streams
                made, check = await series(
                    "sidecar + MariaDB + Redis", env, streams, args, frames, companions=[persister]
                )
                rows += made
                notes.append(check)
        if args.suite:
            env = {**base_env(work / "workers", args), "EARSHOT_WORKERS": "2"}
            made, check = await series(
                "2 workers", env, WORKERS_STREAMS, args, frames, server_histogram=False
            )
            rows += made
            notes.append(check)
    loads.append(f"after {procstats.loadavg()}")
    return report(rows, args, notes, loads)


def report(rows: list[Row], args: argparse.Namespace, notes: list[str], loads: list[str]) -> str:
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(
        [
            "# gateway_streams: concurrent real-time G.711 streams against one gateway",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; load average {'; '.join(loads)}. Engine: in-process "
            f"tiny random-weight Paraformer, 1 inference worker, queue {args.queue_size}. Each "
            f"stream: the bundled sample as 20 ms A-law frames in real time for "
            f"{args.seconds:.0f} s, streams starting over {RAMP_SECONDS:.0f} s; each round "
            "starts once the gateway has no stream and no lag left from the one before. The load "
            "client runs in a second process on the same machine. Stores: embedded (SQLite segments, "
            "memory partials, embedded persister) unless the row says otherwise.",
            "",
            "Latency is client side, from sending the chunk that caused a reply (the model is "
            "deterministic: the recogniser fed the same frames alone says which chunk causes each "
            "reply, frame by frame and through the gateway's held pipeline; the earlier of the two "
            "counts) to receiving it; tail lag is "
            "the latency of each stream's last reply, when it stops sending. Server p50 is the gateway's "
            "`earshot_reply_latency_seconds` (chunk arrival -> reply sent; per process, so not "
            "shown with workers), its median interpolated within the histogram's buckets (1, 2.5, "
            "5, 10, 20 ms and up). CPU and RSS cover every gateway process and, on the sidecar "
            "rows, the persister (not MariaDB or Redis).",
            "",
            *table,
            "",
            *(f"- {note}" for note in notes),
            "",
            "Command: `" + " ".join(["python", "-m", "bench.gateway_streams", *sys.argv[1:]]) + "`",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[50, 100, 150])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--queue-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sidecar", action="store_true")
    parser.add_argument("--suite", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # the client is then slower, and says so in its lateness column
        text = asyncio.run(main_async(args))
    else:
        text = uvloop.run(main_async(args))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
