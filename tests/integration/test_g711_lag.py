"""Refusal instead of lag: a gateway driven well past its capacity refuses new streams with 1013
while it is behind real time, and the streams it admitted keep a bounded reply latency.

The recogniser is the real tiny Paraformer, slowed to a known capacity: each stream's decoding
window (0.6 s of audio) costs 0.2 s of worker time (asleep, so the event loop stays free), i.e.
about three real-time streams. Callers arrive faster than that for a few seconds. The same load
runs twice, with the lag limit alone and without either limit (``EARSHOT_MAX_LAG_SECONDS=0``,
``EARSHOT_MAX_INFERENCE_LOAD=0``); the test compares the two runs, not absolute timings, so a
loaded machine shifts both alike. Callers who all arrive at the same moment can be refused by the
load limit alone, which counts the connections being admitted: the second test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import prometheus_client
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.engines import paraformer, windowing
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.paraformer import ParaformerStream
from earshot.events import Recognition
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.gateway import WrappedDecoder, running_gateway, session_url
from tests.persister import speech_frames

FRAME_SECONDS = 0.02
WINDOW_COST_SECONDS = 0.2
CALLERS = 32
ARRIVAL_SECONDS = 0.2
CALL_FRAMES = 120  # 2.4 s of audio each
BURST = 12


class SlowDecoder(WrappedDecoder):
    """The real decoder, plus a fixed cost for every stream it decodes."""

    def decode(self, streams: Sequence[ParaformerStream]) -> list[list[Recognition]]:
        time.sleep(WINDOW_COST_SECONDS * len(streams))
        return self.inner.decode(streams)


@dataclass
class Outcome:
    admitted: int = 0
    refused: int = 0
    codes: set[int] = field(default_factory=set)
    reply_p99: float = math.nan


async def caller(url: str, frames: list[bytes], offset: float, outcome: Outcome) -> None:
    await asyncio.sleep(offset)
    received: list[dict[str, object]] = []
    async with connect(url) as ws:

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    received.append(json.loads(raw))

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        with contextlib.suppress(ConnectionClosed):
            for index, frame in enumerate(frames[:CALL_FRAMES]):
                await asyncio.sleep(max(0.0, start + index * FRAME_SECONDS - time.perf_counter()))
                await ws.send(frame)
        # The replies of the last windows, then leave.
        await asyncio.wait([receiver], timeout=1.0)
        await ws.close()
        await receiver
    if ws.close_code == 1013 and received and received[0].get("type") == "error":
        assert received[0]["code"] == "inference_overloaded"
        outcome.refused += 1
    else:
        outcome.admitted += 1
    outcome.codes.add(ws.close_code or 0)


def reply_buckets() -> dict[float, float]:
    buckets: dict[float, float] = {}
    for family in prometheus_client.REGISTRY.collect():
        if family.name != "earshot_reply_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the 99th percentile of the replies in between."""
    delta = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    total = delta[-1][1]
    assert total > 0, "no replies were sent"
    return next(bound for bound, count in delta if count >= 0.99 * total)


async def drive(settings: Settings, services: Services, max_lag: float, max_load: float) -> Outcome:
    decoder = SlowDecoder(paraformer.load_paraformer(settings))
    recognizer = BatchingRecognizer(decoder, window=windowing.SHERPA_PARAFORMER)
    limited = settings.model_copy(
        update={"max_lag_seconds": max_lag, "max_inference_load": max_load}
    )
    frames = speech_frames()
    outcome = Outcome()
    before = reply_buckets()
    try:
        async with running_gateway(limited, Services(recognizer, services.stores)) as base:
            await asyncio.gather(
                *(
                    caller(
                        session_url(base, f"lag-{max_lag}-{i}"),
                        frames,
                        i * ARRIVAL_SECONDS,
                        outcome,
                    )
                    for i in range(CALLERS)
                )
            )
    finally:
        await recognizer.aclose()
    outcome.reply_p99 = p99(before, reply_buckets())
    return outcome


async def test_past_capacity_new_streams_are_refused_and_admitted_ones_keep_their_latency(
    settings: Settings, services: Services
) -> None:
    # The lag limit alone: the load limit (the next test) is off, so only lag can refuse.
    unlimited = await drive(settings, services, max_lag=0.0, max_load=0.0)
    limited = await drive(settings, services, max_lag=0.3, max_load=0.0)

    # Without a limit every caller is taken and all of them fall behind together.
    assert (unlimited.admitted, unlimited.refused) == (CALLERS, 0)
    # With it, callers that come while the gateway is behind hear 1013 at once...
    assert limited.refused >= CALLERS // 4, limited
    assert 1013 in limited.codes
    assert limited.admitted >= 4, limited
    # ...and the admitted streams' replies stay far closer to real time.
    assert unlimited.reply_p99 >= 3 * limited.reply_p99, (unlimited, limited)


async def test_callers_arriving_at_once_are_admitted_only_up_to_the_measured_capacity(
    settings: Settings, services: Services
) -> None:
    # All at the same moment, on a warmed-up recogniser: no lag can show yet, so only the load
    # limit, counting the connections being admitted, can refuse.
    recognizer = BatchingRecognizer(
        SlowDecoder(paraformer.load_paraformer(settings)), window=windowing.SHERPA_PARAFORMER
    )
    limited = settings.model_copy(update={"max_lag_seconds": 0.0, "max_inference_load": 0.9})
    frames = speech_frames()
    outcome = Outcome()
    try:
        await recognizer.warm_up()
        capacity = math.floor(0.9 / recognizer.stream_load())
        assert 1 <= capacity < BURST // 2, recognizer.stream_load()
        async with running_gateway(limited, Services(recognizer, services.stores)) as base:
            await asyncio.gather(
                *(
                    caller(session_url(base, f"burst-{i}"), frames, 0.0, outcome)
                    for i in range(BURST)
                )
            )
    finally:
        await recognizer.aclose()
    assert 1 <= outcome.admitted <= capacity, (outcome, capacity)
    assert outcome.refused == BURST - outcome.admitted
