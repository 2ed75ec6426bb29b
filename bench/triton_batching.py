"""Concurrent real-time streams through Triton vs the in-process engine, in the same run.

Starts a real tritonserver (tests/triton_server.py) serving ``model-repo/paraformer_streaming`` on
the tiny random-weight Paraformer (one CPU instance, one ONNX thread), then for each N runs N
streams that each feed the bundled speech sample (16 kHz) as 40 ms chunks in real time (the
requests :class:`TritonRecognizer` sends, also when fed telephony's 20 ms frames:
:data:`earshot.engines.windowing.PARAFORMER_THROUGH_TRITON`), first through Triton, then
through the in-process :class:`BatchingRecognizer` (one worker thread, every chunk handed over at
once: the strictest comparison; the gateway's in-process engine holds audio until sherpa's next
decoding window) on the same model. For each engine and N it reports:

* per-chunk latency p50/p99: from the chunk's real-time slot (its audio complete; the stream
  calls ``accept`` with it then, or later when its previous call has not returned) to the return
  of the call that brought its recognitions (:mod:`bench.chunk_timing`): in process the same
  call; through Triton, whose client pipelines its requests, the same call, a later one or
  ``finish``, or (answers pushed, the default, as the gateways take them) the ``collect`` the
  stream's listener prompted when the answer came between calls; and the p99 of the steady part
  of the round, from a second after the last stream started to half a second before the first
  stream's last slot;
* chunks with text: the same latency over only the chunks whose answer carried a recognition
  (:attr:`bench.chunk_timing.ChunkTimer.texts`; sherpa steps every 0.6 s, so at most about one
  chunk in 15), and how many they were: how long the answers that carry text take to serve, which
  the per-chunk figure mixes with the empty answers;
* slowest 1%: the chunks at or over the round's p99, counted by when they were due in their own
  stream's life (its first second, 10 % of a 10 s stream's chunks; between, 85 %; its last half
  second, 5 %): which part of the streams' lives makes the round's p99;
* late chunks: sent after their real-time slot because the stream's previous call (``accept``,
  or a ``collect`` of pushed answers) had not returned;
* requests: the requests Triton executed over the round (``nv_inference_count``);
* average batch size: Triton's ``nv_inference_count / nv_inference_exec_count`` over the round;
  in process, the streams per ``decode`` call of the decoder;
* CPU per stream in % of one core: the serving side (tritonserver and its Python stub, or the
  benchmark process running the in-process engine) and, for Triton, the client side (this process).

Usage: ``python -m bench.triton_batching [--streams 1 8 32 64] [--seconds 10] [--chunk-ms 40]
[--queue-delay-us N] [--loop uvloop|asyncio] [--answers pushed|next-call] [--start-spread S]
[--quick]``. Writes
``bench/reports/triton_batching.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import gc
import math
import os
import platform
import random
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvloop
from prometheus_client import REGISTRY

from bench import procstats
from bench.chunk_timing import ChunkTimer
from bench.quantiles import percentiles_ms
from earshot.audio import codecs
from earshot.audio.resampling import StreamResampler
from earshot.cli.demoing import sample_audio
from earshot.engines import paraformer, tiny_paraformer
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import Recognizer, Samples
from earshot.engines.triton import ROUND_TRIP_BUCKETS, TritonRecognizer
from earshot.events import Recognition
from tests import triton_server

REPORT = Path(__file__).parent / "reports" / "triton_batching.md"
CHUNK_SECONDS = 0.04
#: Streams start at random offsets within this long, as independent callers do: sherpa decodes a
#: stream every 0.6 s of its audio, so over two such steps the streams' steps fall at random.
#: Streams started within one chunk (``--start-spread 0.04``) decode in the same 40 ms every 0.6 s
#: and end within one chunk. Calls do that after their gateway's gRPC stream to Triton broke (each
#: restarts its sequence with its next chunk, so their steps stay aligned until they end): that
#: worst case.
START_SPREAD_SECONDS = 1.2
#: The steady part of a round: from a second after the last stream started (STARTs, each waiting
#: for its answer) to half a second before the first stream's last slot (the last chunks answered
#: by ``finish``, the ENDs' flushes). A stream's own first second and last half second are its
#: start and end in the slowest-1% count.
STEADY_AFTER_SECONDS = 1.0
STEADY_BEFORE_END_SECONDS = 0.5
RATE = 16_000
MODEL = "paraformer_streaming"
# The event loops the streams' callers can run on: `earshot serve` runs the gateway on uvloop.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@dataclass(frozen=True, slots=True)
class Round:
    """What one engine did with N streams."""

    engine: str
    streams: int
    latencies: list[float]
    #: the latencies of the chunks due in the steady part of the round (:data:`STEADY_AFTER_SECONDS`)
    steady: list[float]
    late_chunks: int
    #: the latencies of the chunks whose answer carried text (:attr:`ChunkTimer.texts`)
    texts: list[float]
    batch: float
    server_cpu: float
    client_cpu: float
    #: the chunks at or over the round's p99 latency, by when in their own stream's life they were
    #: due: (its first second, between, its last half second)
    slowest: tuple[int, int, int] = (0, 0, 0)
    requests: float = math.nan
    #: Triton only: the share of round trips longer than :func:`wait_bound` (their answers come
    #: with a later call than the one that sent the chunk).
    slow_round_trips: float = math.nan
    #: Triton only, means per request in ms: Triton's own request duration, its queue and
    #: compute parts, and this process's round trip (sent to last response read).
    server_request_ms: float = math.nan
    server_queue_ms: float = math.nan
    server_compute_input_ms: float = math.nan
    server_compute_ms: float = math.nan
    client_trip_ms: float = math.nan


class CountingDecoder(paraformer.ParaformerDecoder):
    """The in-process decoder, counting streams per decode call (the in-process batch size)."""

    calls = 0
    streams = 0

    def decode(self, streams: Sequence[paraformer.ParaformerStream]) -> list[list[Recognition]]:
        """Decode and count."""
        CountingDecoder.calls += 1
        CountingDecoder.streams += len(streams)
        return super().decode(streams)


def speech() -> Samples:
    """The bundled sample (espeak-ng speech, 9.6 s) at 16 kHz."""
    audio = codecs.decode(sample_audio(), codecs.Codec.ALAW)
    resampler = StreamResampler(8000, RATE)
    return np.concatenate([resampler.process(audio), resampler.flush()])


async def one_stream(
    recognizer: Recognizer,
    audio: Samples,
    *,
    seconds: float,
    offset: float,
    t0: float,
    chunk_seconds: float = CHUNK_SECONDS,
    pushed: bool = True,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int]:
    """Send ``seconds`` of audio in real time; return (due at, latency) per chunk, the same for
    the chunks whose answer carried text, and the late chunks."""
    chunk = int(chunk_seconds * RATE)
    looped = np.resize(audio, int(seconds * RATE))
    stream = ChunkTimer(recognizer.open_stream(), pushed=pushed)
    late = 0
    try:
        for k, start in enumerate(range(0, len(looped), chunk)):
            due = t0 + offset + (k + 1) * chunk_seconds
            if not await stream.until(due):
                late += 1
            await stream.accept(looped[start : start + chunk], due)
    finally:
        await stream.finish()
    return stream.timed, stream.texts, late


async def load(
    recognizer: Recognizer,
    audio: Samples,
    *,
    streams: int,
    seconds: float,
    chunk_seconds: float = CHUNK_SECONDS,
    pushed: bool = True,
    spread: float = START_SPREAD_SECONDS,
) -> Round:
    """Run N real-time streams at once, started at random offsets within ``spread`` seconds."""
    offsets = [random.uniform(0, spread) for _ in range(streams)]
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(
            one_stream(
                recognizer, np.roll(audio, i * 7919), seconds=seconds, offset=offset, t0=t0,
                chunk_seconds=chunk_seconds, pushed=pushed,
            )
            for i, offset in enumerate(offsets)
        )
    )  # fmt: skip
    opened = t0 + max(offsets) + STEADY_AFTER_SECONDS
    closed = t0 + min(offsets) + seconds - STEADY_BEFORE_END_SECONDS
    # (due at, seconds into its own stream, latency) per chunk
    timed = [
        (due, due - t0 - offset, latency)
        for (chunks, _, _), offset in zip(results, offsets, strict=True)
        for due, latency in chunks
    ]
    latencies = [latency for _, _, latency in timed]
    (p99,) = percentiles_ms(latencies, (99,))
    # Each slow chunk placed in its own stream's life: its first second, its last half second, or
    # between (10 %, 5 % and 85 % of a 10 s stream's chunks).
    slowest = [since for _, since, latency in timed if latency * 1000 >= p99]
    return Round(
        engine=recognizer.name,
        streams=streams,
        latencies=latencies,
        steady=[latency for due, _, latency in timed if opened <= due < closed],
        late_chunks=sum(late for _, _, late in results),
        texts=[latency for _, texts, _ in results for _, latency in texts],
        batch=0.0,
        server_cpu=0.0,
        client_cpu=0.0,
        slowest=(
            sum(since < STEADY_AFTER_SECONDS for since in slowest),
            sum(
                STEADY_AFTER_SECONDS <= since < seconds - STEADY_BEFORE_END_SECONDS
                for since in slowest
            ),
            sum(since >= seconds - STEADY_BEFORE_END_SECONDS for since in slowest),
        ),
    )


def wait_bound(chunk_seconds: float) -> float | None:
    """The client's wait, half a chunk, if it is a bound of the round-trip histogram, else None."""
    half = chunk_seconds / 2
    return next((b for b in ROUND_TRIP_BUCKETS if math.isclose(b, half)), None)


#: This process's round-trip histogram (earshot.engines.triton.ROUND_TRIP) and its labels.
ROUND_TRIP_SERIES = ("earshot_triton_round_trip_seconds", {"model": MODEL})


def round_trips(bound: float | None) -> tuple[float, float]:
    """This process's Triton round trips so far: all of them, and those within ``bound``.

    (0, 0) without a bound: then the share is not reported.
    """
    if bound is None:
        return 0.0, 0.0
    name, labels = ROUND_TRIP_SERIES
    total = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    le = repr(bound)  # the label text prometheus_client writes for a plain float bound
    within = REGISTRY.get_sample_value(f"{name}_bucket", {**labels, "le": le}) or 0.0
    return total, within


#: Triton's cumulative request timings (µs), as :func:`triton_times` returns them.
TRITON_TIMES = (
    "nv_inference_request_success",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


def triton_times(metrics_text: str) -> tuple[float, ...]:
    """Triton's request count and timing sums (:data:`TRITON_TIMES`), then this process's round
    trips to it: their count and their sum in seconds."""
    name, labels = ROUND_TRIP_SERIES
    return (
        *(triton_server.metric_total(metrics_text, m, model=MODEL) for m in TRITON_TIMES),
        REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
        REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0,
    )


def settle_heap() -> None:
    """Before a round: collect, then freeze what is alive (the model built, the records of the
    rounds before) out of the collector's sight, so that a full collection walking the benchmark's
    own records does not fall on the round measured."""
    gc.collect()
    gc.freeze()


def cpu_of_group(group: int) -> float:
    """CPU seconds of every live process in a process group (tritonserver and its stubs)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == group:
                    total += procstats.read(int(proc.name)).cpu_seconds
            except (OSError, ValueError):
                continue
    return total


async def measured(
    run: Callable[[], Awaitable[Round]],
    *,
    server_cpu: Callable[[], float],
    batch: Callable[[], tuple[float, float]],
    streams: int,
    trips: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0),
    times: Callable[[], tuple[float, ...]] | None = None,
) -> Round:
    """Run a round and fill in its CPU shares, batch size and (Triton) slow round trips and
    request timings."""
    me = os.getpid()
    server0, client0, batch0, trips0, times0, wall0 = (
        server_cpu(),
        procstats.read(me).cpu_seconds,
        batch(),
        trips(),
        times() if times is not None else (),
        time.monotonic(),
    )
    result = await run()
    wall = time.monotonic() - wall0
    server1, client1, batch1, trips1, times1 = (
        server_cpu(), procstats.read(me).cpu_seconds, batch(), trips(),
        times() if times is not None else (),
    )  # fmt: skip
    items, calls = batch1[0] - batch0[0], batch1[1] - batch0[1]
    sent, quick = trips1[0] - trips0[0], trips1[1] - trips0[1]
    per_stream = 100.0 / wall / streams
    timed: dict[str, float] = {}
    if times is not None:
        spent = (after - before for before, after in zip(times0, times1, strict=True))
        requests, request, queue, c_input, c_infer, c_output, trips_n, trips_s = spent
        if requests and trips_n:
            timed = {
                "server_request_ms": request / requests / 1000,
                "server_queue_ms": queue / requests / 1000,
                "server_compute_input_ms": c_input / requests / 1000,
                "server_compute_ms": (c_input + c_infer + c_output) / requests / 1000,
                "client_trip_ms": trips_s / trips_n * 1000,
            }
    return Round(
        engine=result.engine,
        streams=streams,
        latencies=result.latencies,
        steady=result.steady,
        late_chunks=result.late_chunks,
        texts=result.texts,
        slowest=result.slowest,
        batch=items / calls if calls else float("nan"),
        server_cpu=(server1 - server0) * per_stream,
        client_cpu=(client1 - client0) * per_stream,
        requests=items,
        slow_round_trips=(sent - quick) / sent if sent else math.nan,
        **timed,
    )


async def run_rounds(
    counts: list[int],
    seconds: float,
    chunk_seconds: float,
    queue_delay_us: int | None = None,
    *,
    pushed: bool = True,
    spread: float = START_SPREAD_SECONDS,
) -> list[Round]:
    """Every round, Triton and in-process, on one tiny model."""
    audio = speech()
    with tempfile.TemporaryDirectory(prefix="earshot-bench-") as scratch:
        workdir = Path(scratch)
        files = tiny_paraformer.build_tiny_paraformer(workdir / "tiny")
        install = triton_server.prepare()
        spec = triton_server.ModelSpec(
            MODEL,
            {"model_dir": str(files.encoder.parent)},
            queue_delay_microseconds=queue_delay_us,
        )
        repository = triton_server.build_model_repository(workdir / "models", install, [spec])
        rounds: list[Round] = []
        with triton_server.TritonServer(install, repository, workdir) as server:
            group = server.pid

            def triton_batch() -> tuple[float, float]:
                text = server.metrics()
                return (
                    triton_server.metric_total(text, "nv_inference_count", model=MODEL),
                    triton_server.metric_total(text, "nv_inference_exec_count", model=MODEL),
                )

            for n in counts:
                settle_heap()
                triton = TritonRecognizer(server.grpc_url)
                try:
                    rounds.append(
                        await measured(
                            functools.partial(
                                load,
                                triton,
                                audio,
                                streams=n,
                                seconds=seconds,
                                chunk_seconds=chunk_seconds,
                                pushed=pushed,
                                spread=spread,
                            ),
                            server_cpu=lambda: cpu_of_group(group),
                            batch=triton_batch,
                            streams=n,
                            trips=functools.partial(round_trips, wait_bound(chunk_seconds)),
                            times=lambda: triton_times(server.metrics()),
                        )
                    )
                finally:
                    await triton.aclose()
                print(row(rounds[-1]), flush=True)
        for n in counts:
            # Every chunk at once: the gateway's engine (earshot.engines.loading) holds audio until
            # sherpa's next window, so its p99 includes whole decodes and would flatter Triton.
            settle_heap()
            local = BatchingRecognizer(CountingDecoder(files), workers=1)
            try:
                result = await measured(
                    functools.partial(
                        load,
                        local,
                        audio,
                        streams=n,
                        seconds=seconds,
                        chunk_seconds=chunk_seconds,
                        spread=spread,
                    ),
                    server_cpu=lambda: 0.0,
                    batch=lambda: (float(CountingDecoder.streams), float(CountingDecoder.calls)),
                    streams=n,
                )
            finally:
                await local.aclose()
            # In process the engine runs in this process: its CPU is the serving side.
            rounds.append(
                Round(
                    result.engine + " (in process)", n, result.latencies, result.steady,
                    result.late_chunks, result.texts, result.batch, server_cpu=result.client_cpu,
                    client_cpu=float("nan"), slowest=result.slowest,
                )
            )  # fmt: skip
            print(row(rounds[-1]), flush=True)
    return rounds


HEADER = (
    "| engine | streams | chunks | late | requests | latency p50 ms | p99 ms | steady p99 ms "
    "| chunks with text: p50 / p99 ms (n) | slowest 1%: start / steady / end | avg batch "
    "| round trips > ½ chunk | Triton request ms: queue + compute | client round trip ms "
    "| serving CPU %/stream | client CPU %/stream |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(r: Round) -> str:
    """One table row."""
    p50, p99 = percentiles_ms(r.latencies, (50, 99))
    steady = f"{percentiles_ms(r.steady, (99,))[0]:.1f}" if r.steady else "-"
    texts = "-"
    if r.texts:
        text_p50, text_p99 = percentiles_ms(r.texts, (50, 99))
        texts = f"{text_p50:.1f} / {text_p99:.1f} ({len(r.texts)})"
    engine = r.engine if "in process" in r.engine else f"{r.engine} (Triton)"
    client = "-" if math.isnan(r.client_cpu) else f"{r.client_cpu:.2f}"
    requests = "-" if math.isnan(r.requests) else f"{r.requests:.0f}"
    slow = "-" if math.isnan(r.slow_round_trips) else f"{r.slow_round_trips:.1%}"
    server = (
        "-"
        if math.isnan(r.server_request_ms)
        else f"{r.server_request_ms:.1f}: {r.server_queue_ms:.1f} + {r.server_compute_ms:.1f}"
    )
    trip = "-" if math.isnan(r.client_trip_ms) else f"{r.client_trip_ms:.1f}"
    return (
        f"| {engine} | {r.streams} | {len(r.latencies)} | {r.late_chunks} | {requests} "
        f"| {p50:.1f} | {p99:.1f} | {steady} | {texts} | {' / '.join(map(str, r.slowest))} "
        f"| {r.batch:.2f} | {slow} | {server} | {trip} | {r.server_cpu:.2f} | {client} |"
    )


def overheads(rounds: list[Round]) -> list[str]:
    """Per N: Triton's p99 chunk latency over the in-process engine's, and Triton's batch."""
    lines = []
    for triton in (r for r in rounds if "in process" not in r.engine):
        local = next(
            (r for r in rounds if "in process" in r.engine and r.streams == triton.streams), None
        )
        if local is None:
            continue
        (p99_triton,) = percentiles_ms(triton.latencies, (99,))
        (p99_local,) = percentiles_ms(local.latencies, (99,))
        steady = texts = ""
        if triton.steady and local.steady:
            (steady_triton,) = percentiles_ms(triton.steady, (99,))
            (steady_local,) = percentiles_ms(local.steady, (99,))
            steady = f" ({steady_triton - steady_local:+.1f} ms in the steady part)"
        if triton.texts and local.texts:
            (texts_triton,) = percentiles_ms(triton.texts, (99,))
            (texts_local,) = percentiles_ms(local.texts, (99,))
            texts = f", the chunks with text's {texts_triton - texts_local:+.1f} ms"
        lines.append(
            f"* {triton.streams} streams: Triton's p99 is {p99_triton - p99_local:+.1f} ms over in "
            f"process{steady}{texts}, average batch {triton.batch:.2f} (targets at 64 streams: under "
            "20 ms, at least 16)."
        )
        if not math.isnan(triton.client_trip_ms):
            before = triton.server_queue_ms + triton.server_compute_input_ms
            holds = triton.client_trip_ms >= before
            lines.append(
                f"  Check: the client's mean round trip ({triton.client_trip_ms:.2f} ms) is "
                f"{'not ' if holds else ''}below the mean time Triton held a request before its "
                f"batch's execute began ({before:.2f} ms: queue and compute input)"
                f"{'' if holds else ': the method is suspect'}; Triton's mean request duration: "
                f"{triton.server_request_ms:.2f} ms."
            )
    return lines


def report(rounds: list[Round], args: argparse.Namespace, load: str) -> str:
    """The Markdown report."""
    chunk_seconds = args.chunk_ms / 1000
    lines = [
        "# Triton batching: concurrent real-time streams, Triton vs in process",
        "",
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, {platform.processor() or platform.machine()}), "
        f"`{command(args)}`: {args.seconds:g} s of audio per stream, "
        f"{args.chunk_ms:g} ms chunks sent in real time, each stream starting at a random offset "
        f"within {args.start_spread:g} s, from one process on {args.loop}'s event loop; load "
        f"average before and after the run: {load}.",
        "",
        "Model: the tiny random-weight streaming Paraformer (sherpa-onnx), one ONNX thread; Triton: "
        "tritonserver 2.51 (nvidia-pytriton 0.7.0), `paraformer_streaming` with one CPU instance, "
        f"sequence batching `oldest`, {batcher(args.queue_delay_us)}; the client sends 40 ms "
        "requests; in process: `BatchingRecognizer` with one worker thread, every chunk handed "
        "over at once.",
        "",
        HEADER,
        *(row(r) for r in rounds),
        "",
        *overheads(rounds),
        "",
        f"* latency: per {chunk_seconds * 1000:.0f} ms chunk, from its real-time slot (its audio "
        "complete: `accept()` is called with it then, or later when it is late) to "
        "the return of the call that brought its recognitions (client side, "
        "`bench/chunk_timing.py`): in process the same call; through Triton, whose client "
        "pipelines its requests, the same call, a later one or `finish()`, or with answers "
        "pushed (the default, as the gateways take them) the `collect()` the stream's listener "
        "prompted when the answer came between calls (it includes gRPC and the sequence "
        f"batcher's queue delay); answers were {answers(args)}. The benchmark's callers wake on "
        "an `asyncio.Event`; the telephony gateway wakes its wait for a WebSocket frame by "
        "cancelling it and the Talk gateway by a marker in its frame queue, whose cost is not in "
        "the client CPU here;",
        f"* steady p99: the same, of the chunks due from {STEADY_AFTER_SECONDS:g} s after the "
        f"last stream started to {STEADY_BEFORE_END_SECONDS:g} s before the first stream's "
        "last slot, when every stream runs: it leaves out "
        "the start, when the streams START and wait for their START's answer (a cost the "
        "in-process engine has no part like), and the end, when their ENDs are flushed and "
        "`finish()` returns the last chunks' answers. The issue's target is the p99 of the whole "
        "round;",
        "* chunks with text: the same latency over only the chunks whose answer carried a "
        "recognition, and how many they were: a recognition belongs to the chunk whose "
        "request's answer carried it, the one that completed the model's decoding step (Triton's "
        "recognitions name its `accept()` by their `heard` time; in process a chunk's text comes "
        "with its own call), each chunk timed to the call that returned its first recognition; "
        "what `finish()` decoded counts for no chunk. It is how long the answers that carry text "
        "take to serve (sherpa steps every 0.6 s: at most about one chunk in 15), not how long "
        "speech takes to become text;",
        "* slowest 1%: the chunks whose latency is at or over the round's p99, counted by when "
        f"they were due in their own stream's life: its first {STEADY_AFTER_SECONDS:g} s (10 % "
        f"of a 10 s stream's chunks), between (85 %), its last {STEADY_BEFORE_END_SECONDS:g} s "
        "(5 %); evenly spread, the slowest 1% would fall about in those shares;",
        "* start spread: sherpa decodes a stream every 0.6 s of its audio; streams that start "
        "within one chunk (`--start-spread 0.04`) all decode in the same 40 ms every 0.6 s and "
        "all END within one chunk, as calls do after their gateway's gRPC stream to Triton "
        "broke (each restarts its sequence with its next chunk), not as independent calls "
        "starting do; started at random "
        f"within {START_SPREAD_SECONDS:g} s (the default: two such steps) their decoding steps "
        "fall at random, as independent callers' do;",
        "* late: chunks sent after their real-time slot because the stream's previous call "
        "(`accept()`, or a `collect()` of pushed answers) had not returned (the wait is in their "
        "latency);",
        "* avg batch: Triton `nv_inference_count / nv_inference_exec_count` over the round; in "
        "process, streams per `decode` call;",
        "* round trips > ½ chunk: Triton only, the share of this process's "
        "`earshot_triton_round_trip_seconds` (a request sent to its last response received) over "
        "the client's wait of half a chunk, when that is a bound of the histogram (chunks of 10, "
        "20, 40, 100, 200 ms and longer ones; '-' otherwise): such an answer misses the call "
        "that sent its chunk; left to the next call it comes about a chunk or more after the "
        "chunk was sent, pushed it comes when it arrives. Every request counts, each stream's "
        "START and END too, whose calls wait for their answers anyway;",
        "* Triton request ms: Triton's mean request duration over the round "
        "(`nv_inference_request_duration_us` / `nv_inference_request_success`), and its parts "
        "queued (`nv_inference_queue_duration_us`) and computing (compute input, infer and output): "
        "each request of a batch is charged the whole batch's compute. The model is decoupled: a "
        "request's responses go out during its batch's `execute`, but the request ends when "
        "`execute` returns, after the whole batch's responses, so its duration can exceed the "
        "client's round trip; what the client's round trip must exceed is the time before "
        "`execute` began (queue and compute input: the check below each round); client round "
        "trip ms: the mean of this process's `earshot_triton_round_trip_seconds` (a request "
        "written to its last response read);",
        "* before each round the benchmark collects its own heap and freezes it "
        "(`gc.freeze()`), so that a full collection of the earlier rounds' records does not "
        "fall on the round measured;",
        "* serving CPU: tritonserver plus its Python stub (Triton) or the benchmark process (in "
        "process); client CPU: the benchmark process driving Triton (the gateway's share).",
        "",
        "The tiny model costs far less than the real one, so these numbers show the overhead and "
        "the batching of the two paths, not the capacity of a real deployment. The machine's two "
        "cores were shared with other work (see the load average): treat the numbers as "
        "indicative.",
    ]
    return "\n".join(lines) + "\n"


def answers(args: argparse.Namespace) -> str:
    """How the run took Triton's answers that came after the call that sent their chunk."""
    if args.answers == "pushed":
        return "pushed: collected when the stream's listener said they came"
    return "left to the stream's next call (`--answers next-call`)"


def batcher(queue_delay_us: int | None) -> str:
    """The sequence batcher's settings the run served: the model's config, maybe another delay."""
    config = (triton_server.MODEL_REPO / MODEL / "config.pbtxt").read_text()
    preferred = re.search(r"preferred_batch_size:\s*\[([^\]]*)\]", config)
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", config)
    sizes = f"[{preferred.group(1).strip()}]" if preferred else "none"
    if queue_delay_us is not None:
        waits = f"{queue_delay_us} µs (set by the run)"
    else:
        waits = f"{delay.group(1) if delay else 0} µs"
    return (
        f"`preferred_batch_size` {sizes}, `max_queue_delay_microseconds` {waits} "
        f"(`model-repo/{MODEL}/config.pbtxt`)"
    )


def command(args: argparse.Namespace) -> str:
    """The command line of the run."""
    words = [
        "python -m bench.triton_batching --streams",
        *map(str, args.streams),
        f"--seconds {args.seconds:g} --chunk-ms {args.chunk_ms:g}",
    ]
    if args.queue_delay_us is not None:
        words.append(f"--queue-delay-us {args.queue_delay_us}")
    if args.loop != "uvloop":
        words.append(f"--loop {args.loop}")
    if args.answers != "pushed":
        words.append(f"--answers {args.answers}")
    if args.start_spread != START_SPREAD_SECONDS:
        words.append(f"--start-spread {args.start_spread:g}")
    return " ".join(words)


def main() -> None:
    """Parse the arguments, run, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 and 8 streams, 4 s each")
    parser.add_argument(
        "--chunk-ms", type=float, default=CHUNK_SECONDS * 1000, help="audio per request"
    )
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=None,
        help="the model's max_queue_delay_microseconds (default: its config's)",
    )
    parser.add_argument(
        "--loop",
        choices=sorted(LOOPS),
        default="uvloop",
        help="the event loop of both engines' callers (uvloop: as `earshot serve` runs them)",
    )
    parser.add_argument(
        "--answers",
        choices=("pushed", "next-call"),
        default="pushed",
        help="Triton's answers that come after the call that sent their chunk: collected as "
        "they come (pushed, as the gateways take them) or left to the stream's next call",
    )
    parser.add_argument(
        "--start-spread",
        type=float,
        default=START_SPREAD_SECONDS,
        help="seconds within which the streams start, each at a random offset (0.04: within one "
        "chunk, every stream's decoding steps together)",
    )
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds = [1, 8], 4.0
    before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(HEADER)
    with asyncio.Runner(loop_factory=LOOPS[args.loop]) as runner:
        rounds = runner.run(
            run_rounds(
                args.streams,
                args.seconds,
                args.chunk_ms / 1000,
                args.queue_delay_us,
                pushed=args.answers == "pushed",
                spread=args.start_spread,
            )
        )
    after = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    args.report.write_text(report(rounds, args, f"{before} / {after}"))
    print("\n".join(overheads(rounds)))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
