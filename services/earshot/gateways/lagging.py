"""How far behind real time a gateway process is, so that it refuses new streams instead of lagging.

Two signals, the larger counts:

* event-loop lag: a tick scheduled every :data:`TICK_SECONDS` measures how late it runs; a loop
  that is late by 300 ms delays every frame of every stream by as much;
* backlog age: how long the oldest piece of audio handed to the recogniser has waited for it
  (``Backlogged``, e.g. :class:`earshot.engines.batching.BatchingRecognizer`); a loop can be
  punctual while the inference worker falls behind.

A recogniser whose inference runs elsewhere (``RemoteBacklogged``: Triton) says how far that is
behind; above the same limit it refuses new streams too, but it is exported apart
(``earshot_triton_backlog_seconds``), not as the process's lag, which the gateway autoscaler reads:
more gateway processes would only send Triton more.

Over the last :data:`WINDOW_SECONDS`, the loop's lag is its smallest sample (a loop that is behind is
late at every tick, while one late tick, a collection or a burst of connections, says little) and
the backlog's is its largest (it drops to nothing whenever the worker has just answered everything,
so its peaks are what the streams wait). The larger of the two is the lag, exported as
``earshot_gateway_lag_seconds``. While it exceeds the limit
(``EARSHOT_MAX_LAG_SECONDS``) the gateway refuses new streams with 1013; the streams it holds go on.

Lag shows only once it has happened: a burst of callers arriving within a decoding step or two is
all admitted before the backlog ages. So a recogniser that can say what a stream costs (``Loaded``,
e.g. :class:`~earshot.engines.batching.BatchingRecognizer`) is also asked what share of its workers
the streams the process holds, those being admitted included, would take; above
``EARSHOT_MAX_INFERENCE_LOAD`` a new stream is refused before it makes everyone late
(``earshot_inference_load_ratio``).

May do: run one owned task on the event loop. Must not: know about WebSockets or sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from prometheus_client import Gauge

from earshot import metrics

TICK_SECONDS = 0.05
WINDOW_SECONDS = 1.0


@runtime_checkable
class Backlogged(Protocol):
    """A recogniser that can say how long its oldest pending audio has waited."""

    def backlog_seconds(self) -> float:
        """Seconds since the oldest audio not yet recognised was handed over; 0 when none is."""
        ...


@runtime_checkable
class RemoteBacklogged(Protocol):
    """A recogniser whose inference runs elsewhere (Triton) and can say how far behind it is."""

    def remote_backlog_seconds(self) -> float:
        """Seconds the remote inference is behind this process's streams; 0 when it keeps up."""
        ...


@runtime_checkable
class Loaded(Protocol):
    """A recogniser that can say how much of its workers' time one real-time stream takes."""

    def stream_load(self) -> float:
        """The share of the workers' time one stream sending audio in real time takes."""
        ...


class LagMonitor:
    """Measures a process's lag on its event loop; :meth:`lagging` says whether to refuse."""

    def __init__(
        self,
        max_lag_seconds: float,
        *,
        backlog: Callable[[], float] | None = None,
        gauge: Gauge | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream_load: Callable[[], float] | None = None,
        streams: Callable[[], int] | None = None,
        max_load: float = 0.0,
        load_gauge: Gauge | None = None,
        remote_backlog: Callable[[], float] | None = None,
        remote_gauge: Gauge | None = None,
    ) -> None:
        """Watch against ``max_lag_seconds`` and ``max_load`` (0: measure, never refuse).

        Args:
            max_lag_seconds: the lag above which :meth:`lagging` is true.
            backlog: the recogniser's backlog age, when it has one.
            gauge: where the lag is exported (``earshot_gateway_lag_seconds`` of one gateway).
            clock: monotonic seconds (tests pass their own).
            stream_load: the share of the recogniser's workers one stream takes, when it can say.
            streams: the streams the process holds, those being admitted included.
            max_load: the load (``streams`` times ``stream_load``) above which :meth:`lagging`
                is true.
            load_gauge: where the load is exported at each tick (``earshot_inference_load_ratio``).
            remote_backlog: how far a remote engine (Triton) is behind, when the recogniser's
                inference runs elsewhere. Above ``max_lag_seconds`` (its peak over the window) it
                refuses new streams too, but it is not the process's lag: more gateway processes
                would not help it, so it is exported apart.
            remote_gauge: where the remote backlog is exported (``earshot_triton_backlog_seconds``).
        """
        self.max_lag_seconds = max_lag_seconds
        self.max_load = max_load
        self._backlog = backlog
        self._gauge = gauge
        self._clock = clock
        self._stream_load = stream_load
        self._streams = streams
        self._load_gauge = load_gauge
        self._remote_backlog = remote_backlog
        self._remote_gauge = remote_gauge
        # (when, loop lag, backlog age, remote backlog) of the ticks of the last WINDOW_SECONDS.
        self._samples: deque[tuple[float, float, float, float]] = deque()

    @property
    def lag_seconds(self) -> float:
        """How far behind the process has been over the last :data:`WINDOW_SECONDS`."""
        if not self._samples:
            return 0.0
        loop = min(lag for _, lag, _, _ in self._samples)
        backlog = max(age for _, _, age, _ in self._samples)
        return max(loop, backlog)

    @property
    def remote_backlog_seconds(self) -> float:
        """How far the remote engine has been behind at its peak over :data:`WINDOW_SECONDS`."""
        return max((remote for _, _, _, remote in self._samples), default=0.0)

    @property
    def load(self) -> float:
        """The share of the recogniser's workers the streams held and being admitted take (0 when
        the recogniser cannot say)."""
        if self._stream_load is None or self._streams is None:
            return 0.0
        return self._streams() * self._stream_load()

    def lagging(self) -> bool:
        """Whether the process is too far behind real time, or its streams (a new one being
        admitted included) would keep the recogniser's workers too busy, to take a new stream."""
        if self.max_lag_seconds > 0 and (
            self.lag_seconds > self.max_lag_seconds
            or self.remote_backlog_seconds > self.max_lag_seconds
        ):
            return True
        return self.max_load > 0 and self.load > self.max_load

    def sample(self, loop_lag: float) -> None:
        """Record one tick's lateness together with the backlog age at this moment."""
        now = self._clock()
        remote = self._remote_backlog() if self._remote_backlog is not None else 0.0
        self._samples.append((now, loop_lag, self._backlog_now(), remote))
        while self._samples and self._samples[0][0] < now - WINDOW_SECONDS:
            self._samples.popleft()
        if self._gauge is not None:
            self._gauge.set(self.lag_seconds)
        if self._remote_gauge is not None:
            self._remote_gauge.set(self.remote_backlog_seconds)
        if self._load_gauge is not None:
            self._load_gauge.set(self.load)

    def _backlog_now(self) -> float:
        return self._backlog() if self._backlog is not None else 0.0

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + TICK_SECONDS
            await asyncio.sleep(TICK_SECONDS)
            self.sample(max(0.0, loop.time() - due))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LagMonitor]:
        """Tick in a task owned by the block."""
        task = asyncio.create_task(self.run(), name="earshot-lag-monitor")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def for_gateway(
    gateway: str,
    max_lag_seconds: float,
    recognizer: object,
    *,
    streams: Callable[[], int] | None = None,
    max_load: float = 0.0,
) -> LagMonitor:
    """The monitor of one gateway process: its loop, plus the recogniser's backlog and, with the
    process's ``streams``, their load when the recogniser can say them."""
    backlog = recognizer.backlog_seconds if isinstance(recognizer, Backlogged) else None
    stream_load = recognizer.stream_load if isinstance(recognizer, Loaded) else None
    remote = recognizer.remote_backlog_seconds if isinstance(recognizer, RemoteBacklogged) else None
    return LagMonitor(
        max_lag_seconds,
        backlog=backlog,
        gauge=metrics.GATEWAY_LAG.labels(gateway),
        stream_load=stream_load,
        streams=streams,
        max_load=max_load,
        load_gauge=metrics.INFERENCE_LOAD.labels(gateway) if stream_load is not None else None,
        remote_backlog=remote,
        remote_gauge=metrics.TRITON_BACKLOG.labels(gateway) if remote is not None else None,
    )
