"""The arithmetic behind issue 17's headline figures: each benchmark's verdict from known inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench import kyutai_clock, kyutai_gpu, triton_batching


def _round(engine: str, latencies_ms: list[float]) -> triton_batching.Round:
    seconds = [ms / 1000 for ms in latencies_ms]
    return triton_batching.Round(
        engine=engine,
        streams=64,
        latencies=seconds,
        steady=seconds,
        late_chunks=0,
        texts=[],
        batch=16.5,
        server_cpu=0.0,
        client_cpu=0.0,
    )


def _timed(r: triton_batching.Round, client_trip_ms: float) -> triton_batching.Round:
    """Triton's own timings of a round (6.1 ms held before execute) and the client's round trip."""
    return dataclasses.replace(
        r,
        client_trip_ms=client_trip_ms,
        server_queue_ms=6.0,
        server_compute_input_ms=0.1,
        server_request_ms=11.5,
    )


def test_the_overhead_is_the_p99_through_triton_less_the_p99_in_process() -> None:
    # 1..100 ms: p99 99.01 ms; 0.1..10 ms in process: p99 9.901 ms
    triton = _timed(_round("paraformer (Triton)", [float(ms) for ms in range(1, 101)]), 11.0)
    local = _round("paraformer (in process)", [ms / 10 for ms in range(1, 101)])
    summary, check = triton_batching.overheads([triton, local])
    assert summary.startswith("* 64 streams: Triton's p99 is +89.1 ms over in process")
    assert "(+89.1 ms in the steady part)" in summary
    assert "average batch 16.50" in summary
    assert "is not below the mean time Triton held a request" in check
    assert "suspect" not in check


def test_a_client_round_trip_shorter_than_tritons_hold_marks_the_method_suspect() -> None:
    triton = _timed(_round("paraformer (Triton)", [10.0] * 100), 5.0)
    _, check = triton_batching.overheads([triton, _round("paraformer (in process)", [1.0] * 100)])
    assert "is below the mean time" in check
    assert "the method is suspect" in check


def test_a_triton_round_without_its_in_process_pair_gets_no_overhead() -> None:
    assert triton_batching.overheads([_round("paraformer (Triton)", [10.0] * 100)]) == []


def test_the_clock_figures_count_steps_per_frame_of_audio_and_the_live_slots_advanced() -> None:
    # 64 streams over 13.5 s (168.75 periods) took 165 steps, which advanced 9,600 stream-frames
    # (150 frames of audio per stream) of 10,560 live slots: the streams fell behind real time
    row = kyutai_clock.Row(
        "clocked (Triton)",
        streams=64,
        window_seconds=13.5,
        steps=165,
        advanced=9_600,
        live=10_560,
        step_seconds=3.3,
        latencies=[0.01] * 99 + [0.2],
        flushed=[1.3, 0.9],
        late=7,
    )
    assert row.steps_per_frame == pytest.approx(1.1)  # 165 steps for 150 frames per stream
    assert row.steps_per_tick == pytest.approx(165 / 168.75)
    assert row.fill == pytest.approx(9_600 / 10_560)
    assert row.mean_step_ms == pytest.approx(20.0)
    cells = [cell.strip() for cell in kyutai_clock.row(row).strip("|").split("|")]
    # p99 of 99 chunks at 10 ms and one at 200: interpolated a hundredth of the way up, 11.9 ms
    assert cells[8:] == ["100", "7", "10.0", "11.9", "200.0", "2, 1300.0"]


def test_a_clock_row_with_no_step_says_not_a_number_rather_than_dividing_by_zero() -> None:
    row = kyutai_clock.Row("clocked", 1, 1.0, 0, 0, 0, 0.0, [0.01], flushed=[], late=0)
    assert math.isnan(row.steps_per_frame)
    assert math.isnan(row.fill)
    assert kyutai_clock.row(row).endswith("| 0, - |")


@pytest.mark.parametrize(
    ("p99_ms", "steps_per_frame", "note", "sustained"),
    [
        (79.9, 1.1, "", True),
        (80.0, 1.0, "", False),  # the budget is one 80 ms frame: a step must take less
        (40.0, 1.11, "", False),  # catch-up steps: the clock falls behind
        (40.0, 1.0, "out of memory", False),
    ],
)
def test_a_gpu_ramp_step_is_sustained_under_the_frame_budget_at_about_one_step_a_frame(
    p99_ms: float, steps_per_frame: float, note: str, sustained: bool
) -> None:
    row = kyutai_gpu.Row(
        streams=640,
        p50_ms=30.0,
        p99_ms=p99_ms,
        max_ms=90.0,
        steps_per_frame=steps_per_frame,
        fill=1.0,
        memory_gib=None,
        per_stream_mib=None,
        note=note,
    )
    assert row.sustained is sustained
