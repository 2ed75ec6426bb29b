"""The operator's own Prometheus metrics and the tiny HTTP server that exposes them.

``earshot_operator_reconcile_duration_seconds{kind}``: time per reconciliation;
``earshot_operator_resources{kind,phase}``: resources the operator knows, by their last phase.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import prometheus_client
from aiohttp import web

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OperatorMetrics:
    """One registry per operator, so tests can run several without global state."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.reconcile_duration = prometheus_client.Histogram(
            "earshot_operator_reconcile_duration_seconds",
            "Time to reconcile one resource (build, apply, status).",
            ["kind"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.resources = prometheus_client.Gauge(
            "earshot_operator_resources",
            "Resources the operator manages, by kind and last observed phase.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str, str], str] = {}
        self._series: set[tuple[str, str]] = set()

    @contextmanager
    def timing(self, kind: str) -> Iterator[None]:
        """Observe the duration of the enclosed reconciliation."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.reconcile_duration.labels(kind=kind).observe(time.perf_counter() - start)

    def record_phase(self, kind: str, namespace: str, *, name: str, phase: str | None) -> None:
        """Remember a resource's phase (None: the resource is gone) and refresh the gauge."""
        key = (kind, namespace, name)
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        counts = Counter((k, p) for (k, _, _), p in self._phases.items())
        # zero the series that emptied so dashboards see 0, not a stale count
        self._series |= set(counts)
        for kind_label, phase_label in self._series:
            count = counts.get((kind_label, phase_label), 0)
            self.resources.labels(kind=kind_label, phase=phase_label).set(count)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return prometheus_client.generate_latest(self.registry)


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on a port; started and stopped by its owner."""

    def __init__(
        self,
        metrics: OperatorMetrics,
        *,
        port: int,
        healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._metrics = metrics
        self._port = port
        self._healthy = healthy
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        """Bind the port (all interfaces: Prometheus scrapes the pod IP)."""
        await self._runner.setup()
        await web.TCPSite(self._runner, port=self._port).start()

    async def stop(self) -> None:
        """Close the listener and open connections."""
        await self._runner.cleanup()

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def _serve_health(self, _: web.Request) -> web.Response:
        # answered on the operator's event loop: a wedged loop times the probe out, a dead drift
        # loop fails it, and the kubelet restarts the operator either way
        if not self._healthy():
            return web.Response(status=503, text="the drift check stopped")
        return web.Response(text="ok")
