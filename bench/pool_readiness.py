"""Pooled against dedicated sessions on a real node: apply -> first accepted audio, pods and RSS.

Starts the single-node cluster of tests/cluster, installs the chart with the images built here
(tests/cluster/release.py; the default pool's gateways may each take 100 streams), then per mode
creates N TranscriptionSessions at a fixed rate, each through the API (one POST from this process,
no ``kubectl`` per session), and for each session:

* **apply -> Ready** (the operator's time): from just before its POST until a list of
  TranscriptionSessions (polled every 50 ms) shows it Ready (pooled: registered with the pool;
  dedicated: its own gateway pod passed its readiness probe);
* **Ready -> first reply** (the client's and the gateway's time): reading the token from the
  session's Secret, opening the WebSocket to ``status.endpoint`` (through the Service's ClusterIP,
  from the node's network namespace), admission, and the first partial or final the gateway sends
  for the audio streamed at real time: the first proof that the audio was accepted;
* **apply -> first reply**, the two together: what a telephony platform waits.

While every stream is live it counts the gateway pods that carry them and sums their RSS
(``total_rss`` of each pod's memory cgroup: gateway and persister containers). Each stream then
ends and the sessions are deleted before the next mode.

Usage: ``python -m bench.pool_readiness [--pooled 100] [--dedicated 10] [--rate 10]``.
Writes ``bench/reports/pool_readiness.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.cluster_sessions import _pod_memory
from bench.quantiles import percentiles_ms
from earshot.audio.codecs import Codec
from earshot.cli import demoing
from earshot.gateways.g711 import client
from earshot_operator.clients import KubeClient, path_of
from tests.chart.charts import CHART
from tests.cluster.harness import Cluster, running_cluster
from tests.cluster.release import RELEASE, Release, installed_release, wait_all_ready

REPORT = Path(__file__).parent / "reports" / "pool_readiness.md"
API = "earshot.dev/v1alpha1"
READY_TIMEOUT_S = 900.0
FRAME_SECONDS = 0.02
POLL_SECONDS = 0.05
POOL_LABEL = "app.kubernetes.io/component=pool-default"
DEDICATED_LABEL = "earshot.dev/kind=tsess"


@dataclass
class Timing:
    """One session's moments, in monotonic seconds."""

    applied: float = 0.0
    ready: float | None = None
    first_reply: float | None = None
    refused: str = ""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    status: dict[str, Any] = field(default_factory=dict)


def _body(name: str, namespace: str, placement: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "TranscriptionSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"userId": "bench", "placement": placement},
    }


def _frames(seconds: float) -> list[bytes]:
    audio = demoing.sample_audio()
    repeats = max(1, int(seconds * 8000 / len(audio)) + 1)
    return client.frames_of(audio * repeats, codec=Codec.ALAW, rate=8000, frame_ms=20)


async def _follow(api: KubeClient, namespace: str, timings: dict[str, Timing]) -> None:
    """Mark each session Ready when a list shows it (every POLL_SECONDS)."""
    path = f"/apis/{API}/namespaces/{namespace}/transcriptionsessions"
    while True:
        listed = await api.request("GET", path)
        now = time.monotonic()
        for body in listed.get("items") or ():
            timing = timings.get(body["metadata"]["name"])
            status = body.get("status") or {}
            if timing is not None and timing.ready is None and status.get("phase") == "Ready":
                timing.ready = now
                timing.status = status
                timing.ready_event.set()
        await asyncio.sleep(POLL_SECONDS)


async def _stream(
    release: Release, api: KubeClient, name: str, timing: Timing, frames: list[bytes]
) -> None:
    """Once Ready: read the token, connect through the Service, stream; note the first reply."""
    await timing.ready_event.wait()
    namespace = release.namespace
    secret = await api.get(
        path_of("v1", "Secret", namespace=namespace, name=timing.status["tokenSecret"])
    )
    assert secret is not None
    token = base64.b64decode(secret["data"]["token"]).decode()
    endpoint = timing.status["endpoint"]
    service = endpoint.removeprefix("ws://").split(".", 1)[0]
    found = await api.get(path_of("v1", "Service", namespace=namespace, name=service))
    assert found is not None
    port = int(endpoint.split(":")[2].split("/")[0])
    sock = await asyncio.to_thread(release.cluster.connect, found["spec"]["clusterIP"], port)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(endpoint, sock=sock, additional_headers=headers, max_size=None) as ws:
        sender = asyncio.create_task(_send(ws, frames))
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] in ("partial", "final") and timing.first_reply is None:
                    timing.first_reply = time.monotonic()
                elif message["type"] == "error":
                    timing.refused = message["code"]
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender


async def _send(ws: Any, frames: list[bytes]) -> None:
    start = time.monotonic()
    for index, frame in enumerate(frames):
        delay = start + index * FRAME_SECONDS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(frame)
    await ws.close()


def _memory(release: Release, label: str) -> tuple[int, float]:
    pods = release.get("pods", "-l", label)["items"]
    return len(pods), sum(_pod_memory(release.cluster, pod)["pod"] for pod in pods)


async def measure(
    release: Release, mode: str, sessions: int, rate: float, stream_seconds: float
) -> dict[str, Any]:
    """Create ``sessions`` sessions of ``mode`` at ``rate`` per second and stream each."""
    placement = {"pool": "default"} if mode == "pooled" else {"dedicated": True}
    label = POOL_LABEL if mode == "pooled" else DEDICATED_LABEL
    timings = {f"{mode}-{i:03d}": Timing() for i in range(sessions)}
    frames = _frames(stream_seconds)
    rss: tuple[int, float] = (0, 0.0)
    async with KubeClient.connect(release.cluster.connection_info()) as api:
        follower = asyncio.create_task(_follow(api, release.namespace, timings))
        streams = []
        start = time.monotonic()
        for index, (name, timing) in enumerate(timings.items()):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            timing.applied = time.monotonic()
            await api.create(_body(name, release.namespace, placement))
            streams.append(asyncio.create_task(_stream(release, api, name, timing, frames)))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while any(t.first_reply is None and not t.refused for t in timings.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("not every stream got a first reply in time")
            await asyncio.sleep(0.5)
        rss = await asyncio.to_thread(_memory, release, label)
        await asyncio.wait_for(asyncio.gather(*streams), stream_seconds + 120.0)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    release.kubectl("delete", "transcriptionsessions", "--all", "--wait=true", "--timeout=600s")
    return _summary(mode, sessions, timings, rss)


def _summary(
    mode: str, sessions: int, timings: dict[str, Timing], rss: tuple[int, float]
) -> dict[str, Any]:
    done = [t for t in timings.values() if t.ready is not None and t.first_reply is not None]
    return {
        "mode": mode,
        "sessions": sessions,
        "refused": sorted(t.refused for t in timings.values() if t.refused),
        "ready_ms": percentiles_ms([t.ready - t.applied for t in done], (50, 99)),  # type: ignore[operator]
        "client_ms": percentiles_ms([t.first_reply - t.ready for t in done], (50, 99)),  # type: ignore[operator]
        "total_ms": percentiles_ms([t.first_reply - t.applied for t in done], (50, 99)),  # type: ignore[operator]
        "pods": rss[0],
        "rss_mib": rss[1],
    }


def _report(results: list[dict[str, Any]], command: str, load: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Pool readiness: pooled against dedicated sessions on a real node",
        "",
        f"Measured {when} with `{command}` on {platform.node()}, {os.cpu_count()} CPUs shared "
        f"with other work (load average before the run: {load}), Python "
        f"{platform.python_version()}, Kubernetes v1.20.2 from tests/cluster/harness.py, the "
        "chart installed from the images built here with tests/cluster/values.yaml and the "
        "default pool's two gateways taking up to 100 streams each.",
        "",
        "Sessions are created through the API by this process (one POST each, at the given rate; "
        "no kubectl process per session). apply -> Ready is the operator's time (until a list, "
        "polled every 50 ms, shows the session Ready); Ready -> first reply is the client's and "
        "the gateway's (read the token Secret, connect through the Service, be admitted, "
        "stream A-law at real time, receive the first partial or final: the first proof the "
        "audio was accepted, so it includes the engine's first decoding window). Pods and RSS "
        "are counted while every stream is live: the gateway pods carrying them, `total_rss` "
        "of their memory cgroups.",
        "",
        "| mode | sessions | apply->Ready p50 | p99 | Ready->first reply p50 | p99 "
        "| apply->first reply p50 | p99 | gateway pods | their RSS | refused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ready, client_, total = r["ready_ms"], r["client_ms"], r["total_ms"]
        lines.append(
            f"| {r['mode']} | {r['sessions']} | {ready[0]:.0f} ms | {ready[1]:.0f} ms "
            f"| {client_[0]:.0f} ms | {client_[1]:.0f} ms | {total[0]:.0f} ms "
            f"| {total[1]:.0f} ms | {r['pods']} | {r['rss_mib']:.0f} MiB "
            f"| {len(r['refused'])} {sorted(set(r['refused']))} |"
        )
    lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _release() -> Iterator[Release]:
    with running_cluster() as cluster, installed_release(cluster) as release:
        _allow_streams(release, cluster)
        yield release


def _allow_streams(release: Release, cluster: Cluster) -> None:
    values = [arg for path in release.values for arg in ("--values", str(path))]
    release.helm(
        "upgrade", RELEASE, str(CHART), *values,
        "--set", "pools.gateways.default.maxConnections=100",
    )  # fmt: skip
    wait_all_ready(release)


def main(argv: list[str]) -> int:
    """Run both modes and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.pool_readiness")
    parser.add_argument("--pooled", type=int, default=100)
    parser.add_argument("--dedicated", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="sessions created per second")
    parser.add_argument("--stream-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.pool_readiness", *argv])
    load = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    results = []
    with _release() as release:
        for mode, count in (("pooled", args.pooled), ("dedicated", args.dedicated)):
            if count:
                result = asyncio.run(measure(release, mode, count, args.rate, args.stream_seconds))
                print(json.dumps(result), flush=True)
                results.append(result)
    REPORT.write_text(_report(results, command, " ".join(load)))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
