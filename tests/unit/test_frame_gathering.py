"""A stream hands its audio over once it is due at the model: Kyutai's frame, or Paraformer's 40 ms
requests and sherpa's decoding windows."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from earshot.engines import kyutai, windowing
from earshot.engines.gathering import FrameGatherer
from earshot.engines.triton import MODELS


def _chunk(samples: int, value: float = 0.0) -> np.ndarray:
    return np.full(samples, value, dtype=np.float32)


def test_twenty_ms_chunks_are_handed_over_once_per_frame_with_every_sample_in_order() -> None:
    gatherer = FrameGatherer(windowing.KYUTAI)
    handed: list[np.ndarray] = []
    for k in range(16):  # 16 chunks of 480 samples: four frames
        if gatherer.add(_chunk(480, float(k))):
            handed.append(gatherer.take())
    assert [len(h) for h in handed] == [1920] * 4
    assert np.array_equal(np.concatenate(handed), np.repeat(np.arange(16.0), 480))


def test_a_hand_over_counts_what_the_model_holds_of_an_unfinished_frame() -> None:
    gatherer = FrameGatherer(windowing.KYUTAI)
    assert not gatherer.add(_chunk(480))  # the caller hands the first chunk over at once anyway
    assert len(gatherer.take()) == 480
    assert not gatherer.add(_chunk(480))
    assert not gatherer.add(_chunk(480))
    assert gatherer.add(_chunk(480))  # 480 held by the model + 1440: one frame
    assert len(gatherer.take()) == 1440
    assert gatherer.add(_chunk(4800))  # a chunk longer than a frame goes at once
    assert len(gatherer.take()) == 4800
    assert len(gatherer.take()) == 0  # the end of a stream takes what is held, maybe nothing


def test_a_restarted_stream_counts_frames_from_what_its_new_sequence_was_sent() -> None:
    gatherer = FrameGatherer(windowing.KYUTAI)
    gatherer.add(_chunk(960))
    gatherer.take()
    gatherer.restart(480)
    assert not gatherer.add(_chunk(960))  # 480 + 960 < 1920 (before the restart: 1920)
    assert gatherer.add(_chunk(480))


def test_without_a_window_every_chunk_is_handed_over() -> None:
    gatherer = FrameGatherer(None)
    assert gatherer.add(_chunk(1))
    assert len(gatherer.take()) == 1


def test_the_triton_client_gathers_the_frame_the_kyutai_model_steps() -> None:
    assert windowing.KYUTAI_FRAME_SAMPLES == kyutai.FRAME_SAMPLES
    assert MODELS["kyutai"].window == windowing.KYUTAI
    assert windowing.KYUTAI.ready_at(0) == kyutai.FRAME_SAMPLES
    assert windowing.KYUTAI.ready_at(kyutai.FRAME_SAMPLES + 1) == 2 * kyutai.FRAME_SAMPLES
    assert MODELS["kyutai"].sample_rate == kyutai.SAMPLE_RATE


def _hand_overs(window: windowing.HandOver, sizes: list[int]) -> list[tuple[int, bool]]:
    """For each chunk: the samples fed with it, and whether it was handed over (the first always)."""
    gatherer = FrameGatherer(window)
    fed, out = 0, []
    for n, size in enumerate(sizes):
        fed += size
        due = gatherer.add(_chunk(size)) or n == 0
        if due:
            gatherer.take()
        out.append((fed, due))
    return out


def test_twenty_ms_frames_go_to_a_paraformer_through_triton_two_by_two() -> None:
    assert MODELS["paraformer"].window == windowing.PARAFORMER_THROUGH_TRITON
    sent = _hand_overs(windowing.PARAFORMER_THROUGH_TRITON, [320] * 100)
    assert [fed for fed, due in sent if due] == [320, *range(640, 32_001, 640)]


@pytest.mark.parametrize("seed", range(5))
def test_no_paraformer_decoding_step_waits_for_the_40_ms_request(seed: int) -> None:
    sherpa = windowing.SHERPA_PARAFORMER
    pick = random.Random(seed)
    sizes = [pick.choice((1, 80, 160, 320, 333, 480, 640, 1000)) for _ in range(400)]
    sent = _hand_overs(windowing.PARAFORMER_THROUGH_TRITON, sizes)
    handed = 0
    for fed, due in sent:
        if fed >= sherpa.ready_at(handed):  # this chunk completes sherpa's next step
            assert due, (fed, handed)
        if due:
            handed = fed
    # and audio is not held past 40 ms of the last hand-over
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise([(0, True), *(s for s in sent if s[1])])]
    assert max(gaps) < windowing.PARAFORMER_REQUEST_SAMPLES + max(sizes)


def test_a_hand_over_needs_a_window() -> None:
    with pytest.raises(ValueError, match="at least one window"):
        windowing.EarliestOf(())
