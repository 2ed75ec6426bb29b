"""LagMonitor: when a gateway process counts as behind real time, and the signals it reads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import prometheus_client
import pytest

from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import EngineError, Samples
from earshot.events import Recognition
from earshot.gateways import lagging
from earshot.gateways.lagging import LagMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ticks(monitor: LagMonitor, clock: Clock, lags: Sequence[float], every: float = 0.05) -> None:
    for lag in lags:
        clock.now += every
        monitor.sample(lag)


def test_a_loop_late_at_every_tick_for_a_second_is_lagging() -> None:
    clock = Clock()
    monitor = LagMonitor(0.5, clock=clock)
    ticks(monitor, clock, [0.6] * 25)
    assert monitor.lagging()
    assert monitor.lag_seconds == pytest.approx(0.6)


def test_one_late_tick_is_not_lagging_and_the_lag_recovers() -> None:
    clock = Clock()
    monitor = LagMonitor(0.5, clock=clock)
    ticks(monitor, clock, [0.0] * 10 + [2.0] + [0.0] * 10)
    assert not monitor.lagging()
    ticks(monitor, clock, [0.7] * 30)
    assert monitor.lagging()
    ticks(monitor, clock, [0.01] * 2)  # the loop caught up: the window's least lag is small
    assert not monitor.lagging()


def test_the_recognisers_backlog_counts_at_its_peak() -> None:
    clock = Clock()
    backlog = [0.0]
    monitor = LagMonitor(0.5, backlog=lambda: backlog[0], clock=clock)
    ticks(monitor, clock, [0.0] * 5)
    backlog[0] = 0.8
    ticks(monitor, clock, [0.0])
    backlog[0] = 0.0  # the worker answered everything for a moment
    ticks(monitor, clock, [0.0] * 5)
    assert monitor.lagging()
    ticks(monitor, clock, [0.0] * 25)  # a second without a backlog
    assert not monitor.lagging()


def test_a_remote_engines_backlog_refuses_but_is_not_the_processs_lag() -> None:
    clock = Clock()
    remote = [0.0]
    registry = prometheus_client.CollectorRegistry()
    lag_gauge = prometheus_client.Gauge("lag", "", registry=registry)
    remote_gauge = prometheus_client.Gauge("remote", "", registry=registry)
    monitor = LagMonitor(
        0.5,
        clock=clock,
        gauge=lag_gauge,
        remote_backlog=lambda: remote[0],
        remote_gauge=remote_gauge,
    )
    ticks(monitor, clock, [0.0] * 5)
    remote[0] = 0.9
    ticks(monitor, clock, [0.0])
    remote[0] = 0.0
    ticks(monitor, clock, [0.0] * 5)
    assert monitor.lagging()  # its peak over the window counts
    assert monitor.remote_backlog_seconds == pytest.approx(0.9)
    assert registry.get_sample_value("remote") == pytest.approx(0.9)
    # the process itself keeps up: the gauge the gateway autoscaler reads stays low
    assert monitor.lag_seconds == 0.0
    assert registry.get_sample_value("lag") == 0.0
    ticks(monitor, clock, [0.0] * 25)
    assert not monitor.lagging()
    assert registry.get_sample_value("remote") == 0.0


def test_the_gateway_reads_a_remote_recognisers_backlog_apart() -> None:
    class Remote:
        def remote_backlog_seconds(self) -> float:
            return 2.0

    monitor = lagging.for_gateway("test-remote", 0.5, Remote())
    monitor.sample(0.0)
    assert monitor.lagging()
    assert monitor.lag_seconds == 0.0
    assert monitor.remote_backlog_seconds == 2.0


def test_no_limit_never_refuses_but_still_measures() -> None:
    clock = Clock()
    gauge = prometheus_client.Gauge("test_lag_seconds", "lag", registry=None)
    monitor = LagMonitor(0.0, clock=clock, gauge=gauge)
    ticks(monitor, clock, [3.0] * 25)
    assert not monitor.lagging()
    assert gauge._value.get() == pytest.approx(3.0)


@pytest.mark.asyncio
async def test_it_measures_a_blocked_event_loop() -> None:
    monitor = LagMonitor(0.1)
    async with monitor.running():
        await asyncio.sleep(0.1)
        for _ in range(6):
            time.sleep(0.3)  # noqa: ASYNC251 (the loop is blocked, as by a gateway that cannot keep up)
            await asyncio.sleep(0)
        assert monitor.lag_seconds >= 0.2
        assert monitor.lagging()


@dataclass(eq=False)
class Plain:
    pass


class HeldDecoder:
    name = "held"
    sample_rate = 16_000

    def __init__(self) -> None:
        self.release = threading.Event()

    def open(self) -> Plain:
        return Plain()

    def accept(self, stream: Plain, samples: Samples) -> None:
        pass

    def finish(self, stream: Plain) -> None:
        pass

    def decode(self, streams: Sequence[Plain]) -> list[list[Recognition]]:
        self.release.wait()
        return [[] for _ in streams]


@pytest.mark.asyncio
async def test_the_batching_recognisers_backlog_is_the_age_of_its_oldest_unanswered_audio() -> None:
    decoder = HeldDecoder()
    recognizer = BatchingRecognizer(decoder)
    monitor = lagging.for_gateway("test", 0.5, recognizer)
    try:
        assert recognizer.backlog_seconds() == 0.0
        waiting = asyncio.create_task(recognizer.open_stream().accept(np.zeros(160, np.float32)))
        await asyncio.sleep(0.3)
        assert 0.25 <= recognizer.backlog_seconds() < 5
        monitor.sample(0.0)
        assert monitor.lagging() is False  # 0.3 s, under the limit of 0.5 s
        decoder.release.set()
        await waiting
        assert recognizer.backlog_seconds() == 0.0
    finally:
        decoder.release.set()
        await recognizer.aclose()


def test_a_load_above_the_limit_refuses_and_no_limit_only_measures() -> None:
    clock = Clock()
    share, held = [0.3], [2]
    gauge = prometheus_client.Gauge("test_load_ratio", "load", registry=None)
    monitor = LagMonitor(
        0.5,
        clock=clock,
        stream_load=lambda: share[0],
        streams=lambda: held[0],
        max_load=0.9,
        load_gauge=gauge,
    )
    ticks(monitor, clock, [0.0])
    assert not monitor.lagging()
    assert gauge._value.get() == pytest.approx(0.6)
    held[0] = 4  # two more arrive at once: the loop is punctual and nothing waits yet
    assert monitor.load == pytest.approx(1.2)
    assert monitor.lagging()
    unlimited = LagMonitor(
        0.5, clock=clock, stream_load=lambda: share[0], streams=lambda: held[0], max_load=0.0
    )
    assert not unlimited.lagging()
    uncounted = LagMonitor(0.5, clock=clock, stream_load=lambda: share[0], max_load=0.9)
    assert uncounted.load == 0.0


class CostlyDecoder(HeldDecoder):
    """Each decoding step costs ``STEP_SECONDS`` of wall time, whatever the batch."""

    STEP_SECONDS = 0.1

    def decode(self, streams: Sequence[Plain]) -> list[list[Recognition]]:
        time.sleep(self.STEP_SECONDS)
        return [[] for _ in streams]


@pytest.mark.asyncio
async def test_a_streams_load_is_the_measured_cost_of_its_audio_on_the_workers() -> None:
    recognizer = BatchingRecognizer(CostlyDecoder(), workers=2)
    held = [0]
    monitor = lagging.for_gateway("test", 0.5, recognizer, streams=lambda: held[0], max_load=0.9)
    try:
        assert recognizer.stream_load() == 0.0  # nothing decoded yet: no cost known
        stream = recognizer.open_stream()
        # Half a second of audio for 0.1 s of decoding, on two workers: 0.1 or more.
        await stream.accept(np.zeros(8_000, np.float32))
        share = recognizer.stream_load()
        assert 0.1 <= share < 0.5
        # A stream's last step (one step for no audio) is no measure of what audio costs.
        await stream.finish()
        assert recognizer.stream_load() == share
        # The gateway's monitor multiplies it by the streams it holds and is admitting.
        held[0] = 2
        assert monitor.load == pytest.approx(2 * share)
        assert not monitor.lagging()
        held[0] = 10
        assert monitor.lagging()
    finally:
        await recognizer.aclose()


@pytest.mark.asyncio
async def test_a_warm_up_measures_the_cost_before_any_caller() -> None:
    recognizer = BatchingRecognizer(CostlyDecoder())
    try:
        await recognizer.warm_up()
        # Two steps of 0.1 s for a second of silence (16 kHz, no window: half a second each).
        assert 0.2 <= recognizer.stream_load() < 1.0
    finally:
        await recognizer.aclose()


class FailingDecoder(HeldDecoder):
    def decode(self, streams: Sequence[Plain]) -> list[list[Recognition]]:
        raise RuntimeError("the model broke")


@pytest.mark.asyncio
async def test_a_failed_step_is_no_measure_of_the_cost() -> None:
    recognizer = BatchingRecognizer(FailingDecoder())
    try:
        with pytest.raises(EngineError):
            await recognizer.open_stream().accept(np.zeros(8_000, np.float32))
        assert recognizer.stream_load() == 0.0
    finally:
        await recognizer.aclose()
