"""Kyutai STT streams of random phase: model steps per 80 ms of audio and the live slots each advances.

For each N, N real-time streams send speech-like audio (noise bursts and pauses) in chunks of
``--chunk-ms`` (20 ms: the telephony gateway's frames), each starting at a random offset within
one 80 ms frame (random phase), through three engines on the tiny random-weight model (CPU, one
torch thread):

* ``clocked (in process)``: :class:`SteppingRecognizer`, the decoding clock the gateway runs;
* ``clocked (Triton)``: ``model-repo/kyutai_stt`` (its CPU config, ``max_streams`` = the largest N)
  on a real tritonserver, through :class:`TritonRecognizer`;
* ``unclocked (in process)``: the previous path, :class:`BatchingRecognizer` with one worker,
  which steps whichever streams have a frame whenever a chunk arrives (the baseline).

Figures are taken over the steady window, from the moment the last stream started to the moment
the first one finished, so ramp-up and the end-of-stream flush are left out:

* steps per 80 ms of audio: model steps in the window over the frames of audio they decoded per
  stream (1.00: one step per frame of audio, whatever N); of time: over the window in 80 ms;
* fill: the streams each step advanced over the live streams at that step, summed over the window's
  steps (clocked: the clock's own counters, for Triton read from its metrics endpoint; unclocked:
  the streams in each ``_step`` call over N);
* chunk latency p50/p99/max: from the chunk's real-time slot (its audio complete) to the return of
  the call that brought its answer (client side, :mod:`bench.chunk_timing`), over every chunk due
  in the window; answers are collected as they come, as the gateways take them: in process the
  chunk's own call, through Triton (whose client pipelines its requests) that call or the collect
  its stream's listener prompted. A chunk whose slot passed while its stream's previous call ran
  is sent late (counted), and the wait is in its latency. A chunk that completes a frame waits
  for the next tick, at most one 80 ms period, plus the step; one that completes none is answered
  at once, unless it waits behind its stream's previous call. The chunks only the stream's
  ``finish()`` answered (its last ones: their wait is the end-of-stream flush of the model's text
  delay, not the clock's) are counted apart with their largest latency.

Usage: ``python -m bench.kyutai_clock [--streams 16 64] [--seconds 12] [--chunk-ms 20]
[--engines clocked unclocked triton]``. Writes ``bench/reports/kyutai_clock.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: it reads it then

import numpy as np
import torch

from bench.chunk_timing import ChunkTimer
from bench.quantiles import percentiles_ms
from earshot.engines import kyutai, kyutai_checkpoints, tiny_kyutai
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.kyutai import FRAME_SECONDS, SAMPLE_RATE, KyutaiDecoder, KyutaiStream
from earshot.engines.recognizers import Recognizer, Samples
from earshot.engines.stepping import SteppingRecognizer
from earshot.engines.triton import TritonRecognizer
from earshot.events import Recognition
from tests import triton_server

REPORT = Path(__file__).parent / "reports" / "kyutai_clock.md"
ENGINES = ("clocked", "unclocked", "triton")
MODEL = "kyutai_stt"

# (steps, streams advanced, live streams, seconds in steps), read at any moment.
Counters = Callable[[], tuple[float, float, float, float]]


@dataclass(frozen=True, slots=True)
class Row:
    """What one engine did with N streams over the steady window."""

    engine: str
    streams: int
    window_seconds: float
    steps: float
    advanced: float
    live: float
    step_seconds: float
    latencies: list[float]
    #: the latencies of the window's chunks that only the stream's ``finish()`` answered
    flushed: list[float]
    #: the window's chunks sent after their real-time slot (the stream's previous call had not
    #: returned)
    late: int

    @property
    def steps_per_frame(self) -> float:
        """Model steps per 80 ms of audio decoded (per stream: streams advanced over N)."""
        return self.steps * self.streams / self.advanced if self.advanced else float("nan")

    @property
    def steps_per_tick(self) -> float:
        """Model steps per 80 ms of wall time."""
        return self.steps / (self.window_seconds / FRAME_SECONDS)

    @property
    def fill(self) -> float:
        """Share of the live streams each step advanced."""
        return self.advanced / self.live if self.live else float("nan")

    @property
    def mean_step_ms(self) -> float:
        """The mean time of one model step."""
        return 1000 * self.step_seconds / self.steps if self.steps else float("nan")

    @property
    def busy(self) -> float:
        """Share of the window the model spent stepping (near 1: the steps alone fill the time)."""
        return self.step_seconds / self.window_seconds


class CountingDecoder(KyutaiDecoder):
    """The unclocked baseline's decoder, counting its model steps and the streams in each."""

    steps = 0
    advanced = 0
    seconds = 0.0

    def _step(self, ready: list[tuple[KyutaiStream, list[Recognition]]]) -> None:
        started = time.monotonic()
        super()._step(ready)
        CountingDecoder.steps += 1
        CountingDecoder.advanced += len(ready)
        CountingDecoder.seconds += time.monotonic() - started


def speechlike(seed: int, seconds: float) -> Samples:
    """Noise bursts of 0.4-1.6 s between pauses of 0.2-0.8 s, at -20 dBFS."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32)
    at = 0
    while at < len(audio):
        burst = int(rng.uniform(0.4, 1.6) * SAMPLE_RATE)
        audio[at : at + burst] = 0.1 * rng.standard_normal(len(audio[at : at + burst]))
        at += burst + int(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    return audio


@dataclass(slots=True)
class Window:
    """The steady window: opened when the last stream starts, closed when the first finishes."""

    counters: Counters
    streams: int
    started: int = 0
    opened_at: float = 0.0
    closed_at: float = 0.0
    at_open: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    at_close: tuple[float, float, float, float] | None = None

    def stream_started(self) -> None:
        self.started += 1
        if self.started == self.streams:
            self.opened_at, self.at_open = time.monotonic(), self.counters()

    def stream_ending(self) -> None:
        if self.at_close is None:
            self.closed_at, self.at_close = time.monotonic(), self.counters()


async def one_stream(
    recognizer: Recognizer,
    audio: Samples,
    *,
    chunk_seconds: float,
    offset: float,
    window: Window,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[float]]:
    """Send ``audio`` in real time from ``offset``, each chunk once its audio is complete; return
    (due at, latency) of the chunks answered before ``finish()``, the same of those it answered,
    and when the chunks sent late were due."""
    chunk = round(chunk_seconds * SAMPLE_RATE)
    # Answers are collected as they come (pushed), as the gateways take them.
    stream = ChunkTimer(recognizer.open_stream(), pushed=True)
    t0 = time.monotonic() + offset
    late: list[float] = []
    try:
        for k, start in enumerate(range(0, len(audio), chunk)):
            due = t0 + (k + 1) * chunk_seconds
            if not await stream.until(due):
                late.append(due)
            await stream.accept(audio[start : start + chunk], due)
            if k == 0:
                window.stream_started()
    finally:
        window.stream_ending()
        await stream.finish(apart=True)
    return stream.timed, stream.flushed, late


async def run_round(
    engine: str,
    recognizer: Recognizer,
    counters: Counters,
    *,
    streams: int,
    args: argparse.Namespace,
) -> Row:
    """N streams of random phase through one recogniser."""
    window = Window(counters, streams)
    rng = random.Random(streams)
    timed = await asyncio.gather(
        *(
            one_stream(
                recognizer,
                speechlike(seed, args.seconds),
                chunk_seconds=args.chunk_ms / 1000,
                offset=rng.uniform(0, FRAME_SECONDS),
                window=window,
            )
            for seed in range(streams)
        )
    )
    assert window.at_close is not None

    def within(due: float) -> bool:
        return window.opened_at <= due < window.closed_at

    def inside(chunks: list[tuple[float, float]]) -> list[float]:
        return [latency for due, latency in chunks if within(due)]

    steps, advanced, live, seconds = (
        b - a for a, b in zip(window.at_open, window.at_close, strict=True)
    )
    return Row(
        engine,
        streams,
        window.closed_at - window.opened_at,
        steps,
        advanced,
        live,
        seconds,
        latencies=[latency for answered, _, _ in timed for latency in inside(answered)],
        flushed=[latency for _, flushed, _ in timed for latency in inside(flushed)],
        late=sum(within(due) for _, _, late in timed for due in late),
    )


def _decoder(
    checkpoint: Path, slots: int, cls: type[KyutaiDecoder] = KyutaiDecoder
) -> KyutaiDecoder:
    model = kyutai_checkpoints.load_checkpoint(checkpoint, device="cpu")
    return cls(model, kyutai.KyutaiOptions(max_streams=slots, cuda_graphs=False))


async def in_process_rows(checkpoint: Path, args: argparse.Namespace) -> list[Row]:
    """The clocked and the unclocked in-process engines."""
    rows: list[Row] = []
    for n in args.streams if "clocked" in args.engines else []:
        clocked = SteppingRecognizer(_decoder(checkpoint, n))

        def clock_counters(
            r: SteppingRecognizer[KyutaiStream] = clocked,
        ) -> tuple[float, float, float, float]:
            stats = r.clock.stats
            return float(stats.steps), float(stats.advanced), float(stats.live), stats.step_seconds

        try:
            rows.append(
                await run_round(
                    "clocked (in process)", clocked, clock_counters, streams=n, args=args
                )
            )
        finally:
            await clocked.aclose()
        print(row(rows[-1]), flush=True)
    for n in args.streams if "unclocked" in args.engines else []:
        unclocked = BatchingRecognizer(
            _decoder(checkpoint, n, CountingDecoder), workers=1, max_batch=n
        )

        def step_counters(n: int = n) -> tuple[float, float, float, float]:
            steps = float(CountingDecoder.steps)
            return steps, float(CountingDecoder.advanced), steps * n, CountingDecoder.seconds

        try:
            rows.append(
                await run_round(
                    "unclocked (in process)", unclocked, step_counters, streams=n, args=args
                )
            )
        finally:
            await unclocked.aclose()
        print(row(rows[-1]), flush=True)
    return rows


async def triton_rows(checkpoint: Path, args: argparse.Namespace) -> list[Row]:
    """The clocked Triton model, one server for every N."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="earshot-bench-") as scratch:
        workdir = Path(scratch)
        install = triton_server.prepare(engines=triton_server.ENGINES)
        spec = triton_server.ModelSpec(
            MODEL, {"model_dir": str(checkpoint), "max_streams": str(max(args.streams))}
        )
        repository = triton_server.build_model_repository(workdir / "models", install, [spec])
        with triton_server.TritonServer(install, repository, workdir, config_name="cpu") as server:

            def counters() -> tuple[float, float, float, float]:
                text = server.metrics()
                return (
                    triton_server.metric_total(text, "earshot_engine_steps_total", model=MODEL),
                    triton_server.metric_total(
                        text, "earshot_engine_streams_advanced_total", model=MODEL
                    ),
                    triton_server.metric_total(
                        text, "earshot_engine_streams_live_total", model=MODEL
                    ),
                    triton_server.metric_total(
                        text, "earshot_engine_step_seconds_total", model=MODEL
                    ),
                )

            for n in args.streams:
                recognizer = TritonRecognizer(server.grpc_url, engine="kyutai")
                try:
                    rows.append(
                        await run_round(
                            "clocked (Triton)", recognizer, counters, streams=n, args=args
                        )
                    )
                finally:
                    await recognizer.aclose()
                print(row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| engine | streams | window s | steps per 80 ms of audio | steps per 80 ms of time "
    "| fill % | mean step ms | steps' share of time % | chunks | late | chunk p50 ms | p99 ms "
    "| max ms | answered by finish: chunks, max ms |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: Row) -> str:
    """One table row."""
    p50, p99, top = percentiles_ms(r.latencies, (50, 99, 100))
    flushed = f"{len(r.flushed)}, {1000 * max(r.flushed):.1f}" if r.flushed else "0, -"
    return (
        f"| {r.engine} | {r.streams} | {r.window_seconds:.1f} | {r.steps_per_frame:.3f} "
        f"| {r.steps_per_tick:.3f} | {100 * r.fill:.1f} | {r.mean_step_ms:.1f} "
        f"| {100 * r.busy:.0f} | {len(r.latencies)} | {r.late} | {p50:.1f} "
        f"| {p99:.1f} | {top:.1f} | {flushed} |"
    )


def report(rows: Sequence[Row], args: argparse.Namespace, load: str) -> str:
    """The Markdown report."""
    command = (
        f"python -m bench.kyutai_clock --streams {' '.join(map(str, args.streams))} "
        f"--seconds {args.seconds:g} --chunk-ms {args.chunk_ms:g} --engines {' '.join(args.engines)}"
    )
    lines = [
        "# Kyutai decoding clock: steps per 80 ms of audio and live slots advanced per step",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), `{command}`; "
        f"load average before and after the run: {load}. Tiny random-weight Kyutai model on CPU, one torch "
        f"thread; every stream sends {args.seconds:g} s of speech-like audio in "
        f"{args.chunk_ms:g} ms chunks in real time, starting at a random offset within 80 ms.",
        "",
        HEADER,
        *(row(r) for r in rows),
        "",
        "How each figure was obtained (see the module docstring of `bench/kyutai_clock.py`):",
        "",
        "* window: from the last stream's first chunk to the first stream's end (ramp-up and the "
        "end-of-stream flush left out);",
        "* steps per 80 ms of audio: model steps in the window over the 80 ms frames of audio they "
        "decoded per stream (streams advanced / N); of time: over the window's length in 80 ms "
        "(below 1: the streams fell behind real time, the machine being too busy); steps: the "
        "clock's counters (for Triton `earshot_engine_steps_total` from its metrics endpoint), "
        "unclocked: calls of `KyutaiDecoder._step`;",
        "* mean step: time in model steps over the steps (the clock's `step_seconds`, for Triton "
        "`earshot_engine_step_seconds_total`; unclocked: `KyutaiDecoder._step` timed); steps' "
        "share of time: time in steps over the window (near 100 %: the model alone takes all the "
        "time, the machine is too slow for these streams whatever the scheduling);",
        "* fill: streams advanced over live streams, summed over the window's steps "
        "(`earshot_engine_streams_advanced_total / earshot_engine_streams_live_total`; unclocked: "
        "the streams in each step over N);",
        "* chunk latency: from the chunk's real-time slot (its audio complete) to the return of "
        "the call that brought its answer (client side, `bench/chunk_timing.py`), chunks due in "
        "the window, answers collected as they come (as the gateways take them): in process the "
        "chunk's own call; through Triton that call or the collect its stream's listener "
        "prompted. With the clock a chunk that completes a frame waits for the next tick (at most "
        "80 ms) plus the step; the others are answered at once unless they wait behind their "
        "stream's previous call;",
        "* late: chunks whose slot passed while their stream's previous call ran (sent late; the "
        "wait is in their latency);",
        "* answered by finish: the window's chunks that only the stream's `finish()` answered "
        "(its last ones; their wait is the end-of-stream flush of the model's text delay), kept "
        "out of the latency columns, with the largest of their latencies.",
        "",
        "The tiny model's step costs milliseconds on CPU, so these figures show the scheduling "
        "(how many streams each step advances), not a real model's capacity: see "
        "`bench/reports/kyutai_gpu.md` for that.",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> list[Row]:
    """Every round."""
    with tempfile.TemporaryDirectory(prefix="earshot-tiny-kyutai-") as scratch:
        checkpoint = tiny_kyutai.ensure_tiny_checkpoint(Path(scratch))
        rows = await in_process_rows(checkpoint, args)
        if "triton" in args.engines:
            rows += await triton_rows(checkpoint, args)
    return rows


def main() -> None:
    """Parse the arguments, run, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--chunk-ms", type=float, default=20.0)
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="clocked: in process; unclocked: the in-process baseline; triton: clocked in Triton",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(HEADER)
    rows = asyncio.run(run(args))
    after = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    args.report.write_text(report(rows, args, f"{before} / {after}"))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
