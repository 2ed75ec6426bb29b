"""What a native call that releases the GIL costs the event loop when another thread wants the GIL.

The gateway's event loop shares the GIL with its inference thread. A call that releases the GIL
(soxr's ``resample_chunk``, numpy decoding a frame through its lookup table) lets a waiting thread
take it, and the loop then waits for it back: up to ``sys.getswitchinterval()`` each time. This
counts calls per second of the gateway's per-frame audio calls alone, and with a thread beside them
that runs Python without pause (the worst case for the loop), against a pure-Python call of similar
length that keeps the GIL; and the inference thread's sherpa ``accept_waveform`` of a 0.6 s window
given a numpy array or a list (the binding converts it with the GIL held). It prints a table;
``bench/reports/gateway_streams_held.md`` quotes it.

Usage: ``python -m bench.gil_handoff [--seconds 1]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from earshot.audio import codecs
from earshot.audio.resampling import StreamResampler
from earshot.engines import paraformer

FRAME_BYTES = 160  # 20 ms of 8 kHz G.711


def calls_per_second(call: Callable[[], object], seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        call()
        done += 1
    return done / (time.perf_counter() - started)


def python_work() -> int:
    """A short piece of pure Python: it keeps the GIL throughout."""
    return sum(range(60))


def spin() -> int:
    """What the busy thread repeats: pure Python, never releasing the GIL for long."""
    return sum(range(100))


def calls_per_second_beside(
    call: Callable[[], object], other: Callable[[], object], seconds: float
) -> float:
    """Calls of ``call`` per second while another thread makes ``other`` over and over."""
    stop = threading.Event()

    def repeat() -> None:
        while not stop.is_set():
            other()

    thread = threading.Thread(target=repeat, daemon=True)
    thread.start()
    try:
        return calls_per_second(call, seconds)
    finally:
        stop.set()
        thread.join()


class Streams:
    """sherpa streams to feed, a fresh one every 100 calls (a stream keeps its features)."""

    def __init__(self, recognizer: Any) -> None:
        self._recognizer = recognizer
        self._stream = recognizer.create_stream()
        self._calls = 0

    def accept(self, audio: object) -> None:
        self._calls += 1
        if self._calls % 100 == 0:
            self._stream = self._recognizer.create_stream()
        self._stream.accept_waveform(paraformer.SAMPLE_RATE, audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    frame = bytes(range(FRAME_BYTES))
    samples = codecs.decode(frame, codecs.Codec.ALAW)
    resampler = StreamResampler(8000, 16000)
    model = paraformer.cached_tiny_paraformer(Path(tempfile.gettempdir()) / "earshot-bench")
    recognizer = paraformer.ParaformerDecoder(model)._recognizer
    window = (np.random.default_rng(1).standard_normal(9600) * 0.1).astype(np.float32)
    streams = Streams(recognizer)

    calls: dict[str, Callable[[], object]] = {
        "soxr resample_chunk, 20 ms": lambda: resampler.process(samples),
        "A-law decode, 20 ms": lambda: codecs.decode(frame, codecs.Codec.ALAW),
        "pure Python (keeps the GIL)": python_work,
        "sherpa accept_waveform, 0.6 s as numpy": lambda: streams.accept(window),
        "sherpa accept_waveform, 0.6 s as list": lambda: streams.accept(window.tolist()),
    }
    print(f"switch interval {sys.getswitchinterval() * 1000:g} ms; {args.seconds:g} s per figure")
    print(
        "| call | calls/s alone | calls/s beside a busy thread | ratio | "
        "a Python loop's speed beside a thread making the call |"
    )
    print("|---|---|---|---|---|")
    for name, call in calls.items():
        alone = calls_per_second(call, args.seconds)
        contended = calls_per_second_beside(call, spin, args.seconds)
        # A Python loop's speed while another thread makes the call, against alone.
        others = calls_per_second_beside(python_work, call, args.seconds) / calls_per_second(
            python_work, args.seconds
        )
        print(
            f"| {name} | {alone:,.0f} | {contended:,.0f} | {contended / alone:.3f} | {others:.3f} |"
        )


if __name__ == "__main__":
    main()
