"""How many real-time Kyutai STT streams one device sustains.

Builds a random-weight Kyutai STT model in memory (``--size 1b``: the published ``stt-1b-en_fr``
shapes, about 1 billion LM parameters and the published Mimi; ``--size tiny``: the test model),
then for each N in a ramp opens N streams on an :class:`earshot.engines.kyutai.KyutaiDecoder` with N
batch slots and steps them together, 80 ms of audio per stream per step (speech-like noise bursts
and pauses, a different signal per stream). A step must take less than 80 ms for N streams to keep
up with real time. For each N it reports the step latency p50/p95/max, the real-time factor (p95
step / 80 ms), device memory, and whether N is sustained (p95 under the budget). The ramp stops at
the first N that is not sustained or does not fit in memory.

The step is ``KyutaiDecoder.decode`` itself: Mimi encoding, the LM step with the VAD heads,
detokenisation and segmentation, and the host-device copies, as the in-process engine and the
Triton model run it. Weights are random but shaped as in the tests (silence gives text padding),
which does not change the amount of computation.

Usage: ``python bench/kyutai_gpu.py [--device cuda] [--size 1b] [--streams 1 8 32 ...]``
(needs only torch, moshi and earshot). Writes ``bench/reports/kyutai_gpu.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: it reads it then

import numpy as np
import torch

from earshot.engines import tiny_kyutai
from earshot.engines.kyutai import FRAME_SAMPLES, FRAME_SECONDS, KyutaiDecoder, KyutaiOptions
from earshot.engines.kyutai_checkpoints import KyutaiModel
from earshot.engines.recognizers import Samples

REPORT = Path(__file__).parent / "reports" / "kyutai_gpu.md"
RAMPS = {
    "cuda": [1, 8, 32, 64, 128, 192, 256, 320, 384, 448, 512, 640, 768],
    "cpu": [1, 2, 4, 8, 16, 32, 64, 128, 256],
}
BUDGET_MS = FRAME_SECONDS * 1000


@dataclass(frozen=True, slots=True)
class Row:
    """The measurements of one N."""

    streams: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    memory_gib: float | None
    note: str = ""

    @property
    def sustained(self) -> bool:
        """Whether N streams keep up with real time (p95 step under 80 ms)."""
        return not self.note and self.p95_ms < BUDGET_MS


def _speechlike(seed: int, frames: int) -> Samples:
    """Noise bursts of 0.4-1.6 s between pauses of 0.2-0.8 s, at -20 dBFS."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(frames * FRAME_SAMPLES, dtype=np.float32)
    at = 0
    while at < len(audio):
        burst = int(rng.uniform(0.4, 1.6) * 24_000)
        audio[at : at + burst] = 0.1 * rng.standard_normal(len(audio[at : at + burst]))
        at += burst + int(rng.uniform(0.2, 0.8) * 24_000)
    return audio


def _measure(model: KyutaiModel, streams: int, args: argparse.Namespace) -> Row:
    decoder = KyutaiDecoder(
        model, KyutaiOptions(max_streams=streams, cuda_graphs=not args.no_cuda_graphs)
    )
    try:
        opened = [decoder.open() for _ in range(streams)]
        frames = args.warmup + args.steps
        audios = [_speechlike(seed, frames) for seed in range(streams)]
        times: list[float] = []
        for step in range(frames):
            for stream, audio in zip(opened, audios, strict=True):
                decoder.accept(stream, audio[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES])
            started = time.perf_counter()
            decoder.decode(opened)  # returns host lists: the device work is done
            if step >= args.warmup:
                times.append(time.perf_counter() - started)
    finally:
        decoder.close()
    p50, p95, top = (float(v) * 1000 for v in np.percentile(times, [50, 95, 100]))
    return Row(streams, p50, p95, top, _peak_memory_gib(args.device))


def _peak_memory_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _ramp(model: KyutaiModel, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for streams in args.streams:
        try:
            row = _measure(model, streams, args)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(
                Row(streams, float("nan"), float("nan"), float("nan"), None, "out of memory")
            )
            break
        rows.append(row)
        print(f"N={streams:4d}  p50 {row.p50_ms:7.1f} ms  p95 {row.p95_ms:7.1f} ms", flush=True)
        if not row.sustained:
            break
    return rows


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _graphs(args: argparse.Namespace) -> str:
    if not args.device.startswith("cuda"):
        return ""
    return ", CUDA graphs " + ("off" if args.no_cuda_graphs else "on")


def _report(rows: list[Row], model: KyutaiModel, args: argparse.Namespace) -> str:
    parameters = sum(p.numel() for p in model.lm.parameters()) / 1e6
    sustained = [row.streams for row in rows if row.sustained]
    lines = [
        "# Kyutai STT: real-time streams on one device",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `python bench/kyutai_gpu.py "
        f"--device {args.device} --size {args.size}`: device {_device_name(args.device)}, "
        f"torch {torch.__version__}, LM {parameters:.3g} M parameters "
        f"({next(model.lm.parameters()).dtype}), {args.steps} measured steps per N after "
        f"{args.warmup} warm-up steps{_graphs(args)}.",
        "",
        "One step = 80 ms of audio for every stream (all N slots busy): the budget is 80 ms.",
        "",
        "| streams | step p50 ms | step p95 ms | step max ms | RTF (p95/80 ms) | peak GiB | sustained |",
        "|---:|---:|---:|---:|---:|---:|:---|",
    ]
    for row in rows:
        memory = "-" if row.memory_gib is None else f"{row.memory_gib:.1f}"
        verdict = row.note or ("yes" if row.sustained else "no")
        lines.append(
            f"| {row.streams} | {row.p50_ms:.1f} | {row.p95_ms:.1f} | {row.max_ms:.1f} | "
            f"{row.p95_ms / BUDGET_MS:.2f} | {memory} | {verdict} |"
        )
    best = max(sustained, default=0)
    lines += ["", f"Most streams sustained in this ramp: **{best}**.", ""]
    if args.size == "tiny":
        lines.append(
            "The tiny model measures the decoder's own overhead per step (Mimi + LM + host work), "
            "not the capacity of a real model: run `--device cuda --size 1b` on a GPU for that "
            "(published target to beat: 400 streams on one H100)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the command line, run the ramp, print and write the report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(tiny_kyutai.SIZES), default=None)
    parser.add_argument("--streams", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    args.size = args.size or ("1b" if on_cuda else "tiny")
    args.streams = args.streams or RAMPS["cuda" if on_cuda else "cpu"]
    torch.set_num_threads(args.threads)

    model = tiny_kyutai.random_model(tiny_kyutai.SIZES[args.size], device=args.device)
    report = _report(_ramp(model, args), model, args)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
