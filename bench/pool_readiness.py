"""Pooled against dedicated sessions on a real node: apply -> first accepted audio, pods and RSS.

Starts the single-node cluster of tests/cluster, installs the chart with the images built here
(tests/cluster/release.py; the default pool's gateways may each take 100 streams), then per stream
length and mode creates N TranscriptionSessions at a fixed rate, each through the API (one POST
from this process, no ``kubectl`` per session), and for each session notes:

* **apply -> Ready** (the operator's time): from just before its POST until this process's watch
  of TranscriptionSessions delivers it Ready (pooled: registered with the pool; dedicated: its own
  gateway pod passed its readiness probe);
* **apply -> accepted**, the first accepted audio: reading the token from the session's Secret,
  a TCP connection to ``status.endpoint`` (through the Service's ClusterIP, from the node's
  network namespace; Ready -> connected) and the WebSocket handshake (connected -> accepted).
  The gateway completes a handshake only once it has admitted the connection (the session
  registered with the pool, its token, the gateway's lag and connection cap: see
  ``earshot.gateways.g711.app``; a pool gateway whose watch has not yet delivered the
  registration waits for it), and a refused connection hears why as the first message after its
  handshake. So a handshake followed by no error is admission, and the first
  frame, sent at once after it, is the first accepted audio. A session whose first message is an
  error counts as refused, not accepted;
* **apply -> first reply**: the first partial or final the gateway sends for the audio streamed
  at real time (it includes the engine's first decoding window).

Each stream sends ``--stream-seconds`` of A-law audio at real time, then (if no reply came yet)
waits up to ``--reply-wait`` seconds for its first reply before it closes. Several stream lengths
may be given: short streams measure readiness without 100 concurrent real-time streams loading the
node, long ones measure it under that load. Once every session has been accepted or refused (or
has ended) it counts the gateway pods that carry them and sums their RSS (``total_rss`` of each
pod's memory cgroup: gateway and persister containers), with the number of streams live then.
Each stream then ends (an error the gateway tells it after its first reply, and the close code it
ends with, are recorded over its whole life) and the sessions are deleted before the next round.

It also notes, per round, the CPU time of the operator's pod and of this process, how late this
process's event loop runs (the moments it notes are late by as much) and the machine's lowest
MemAvailable. Dedicated sessions are capped to what leaves ``--min-free-gib`` free; sessions
neither accepted nor refused ``--settle-timeout`` seconds after the last was created count as
unsettled; each round deletes its sessions, also when it fails.

Usage: ``python -m bench.pool_readiness [--pooled 100] [--dedicated 10] [--rate 10]
[--stream-seconds 1 3 30] [--reply-wait 10] [--pool-cpu 500m] [--operator-cpu 500m]
[--pool-max-lag 0] [--settle-timeout 300] [--min-free-gib 3] [--report PATH]``. Writes
``bench/reports/pool_readiness.md`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import errno
import json
import os
import platform
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kopf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench.cluster_sessions import _total_rss_mib
from bench.quantiles import percentiles_ms
from earshot.audio.codecs import Codec
from earshot.cli import demoing
from earshot.gateways.g711 import client
from earshot_operator.clients import KubeClient, path_of
from tests.cluster.harness import running_cluster
from tests.cluster.release import Release, installed_release

REPORT = Path(__file__).parent / "reports" / "pool_readiness.md"
API = "earshot.dev/v1alpha1"
COLLECTION = "transcriptionsessions"
SETTLE_TIMEOUT_S = 300.0
FRAME_SECONDS = 0.02
CONNECT_RETRY_S = 60.0
RETRY_SECONDS = 0.05
TARGET_S = 1.0
_NOT_YET = (errno.ECONNREFUSED, errno.EHOSTUNREACH)
POOL_LABEL = "app.kubernetes.io/component=pool-default"
DEDICATED_LABEL = "earshot.dev/kind=tsess"
POOL_STREAMS = 100
OPERATOR_METRICS_PORT = 8080
RECONCILE = "earshot_operator_reconcile_duration_seconds"
OPERATOR_LABEL = "app.kubernetes.io/component=operator"
_CPUACCT = Path("/sys/fs/cgroup/cpuacct")
_MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
LAG_TICK_S = 0.01


@dataclass
class Timing:
    """One session's moments, in monotonic seconds."""

    applied: float = 0.0
    created: float = 0.0
    ready: float | None = None
    connected: float | None = None
    accepted: float | None = None
    first_reply: float | None = None
    refused_at: float | None = None
    ended: bool = False
    refused: str = ""
    refusal: str = ""
    #: the error a stream was told after its first reply (it failed mid-stream), and how it closed
    failed: str = ""
    close_code: int | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    status: dict[str, Any] = field(default_factory=dict)


@dataclass
class Round:
    """What the streams of one round share: the API client, the Services found, live streams."""

    release: Release
    api: KubeClient
    frames: list[bytes]
    reply_wait: float
    services: dict[str, str] = field(default_factory=dict)
    live: int = 0


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
    frames = client.frames_of(audio * repeats, codec=Codec.ALAW, rate=8000, frame_ms=20)
    return frames[: max(1, round(seconds / FRAME_SECONDS))]


def _http(info: kopf.ConnectionInfo) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=info.ca_path)
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    return httpx.AsyncClient(
        base_url=info.server, verify=context, timeout=httpx.Timeout(10.0, read=None)
    )


async def _follow(
    info: kopf.ConnectionInfo, namespace: str, timings: dict[str, Timing], watching: asyncio.Event
) -> None:
    """Mark each session Ready when a watch of the sessions delivers it so (one list, then a
    watch from its version, resumed when the server ends it)."""
    path = f"/apis/{API}/namespaces/{namespace}/{COLLECTION}"

    def seen(body: dict[str, Any], now: float) -> None:
        timing = timings.get(body["metadata"]["name"])
        status = body.get("status") or {}
        if timing is not None and timing.ready is None and status.get("phase") == "Ready":
            timing.ready = now
            timing.status = status
            timing.ready_event.set()

    async with _http(info) as http:
        listed = (await http.get(path)).raise_for_status().json()
        version = listed["metadata"]["resourceVersion"]
        for body in listed.get("items") or ():
            seen(body, time.monotonic())
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": "600"}
        while True:
            params["resourceVersion"] = version
            async with http.stream("GET", path, params=params) as response:
                response.raise_for_status()
                watching.set()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    body = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"the watch failed: {body}")
                    version = body["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        seen(body, time.monotonic())


async def _stream(run: Round, timing: Timing) -> None:
    """Once Ready: read the token, connect through the Service, stream; note the handshake (the
    admission) and the first reply."""
    try:
        await timing.ready_event.wait()
        endpoint = timing.status["endpoint"]
        token = await _token(run, timing.status["tokenSecret"])
        sock = await _connect(run, endpoint)
        timing.connected = time.monotonic()
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(endpoint, sock=sock, additional_headers=headers, max_size=None) as ws:
            timing.accepted = time.monotonic()
            run.live += 1
            try:
                await _converse(ws, timing, run)
            finally:
                run.live -= 1
    except (OSError, InvalidHandshake) as error:
        timing.refused = f"failed: {error!r}"
    finally:
        timing.ended = True


async def _converse(ws: ClientConnection, timing: Timing, run: Round) -> None:
    sender = asyncio.create_task(_send(ws, run.frames, timing.replied, run.reply_wait))
    try:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] in ("partial", "final") and timing.first_reply is None:
                timing.first_reply = time.monotonic()
                timing.replied.set()
            elif message["type"] == "error" and timing.first_reply is None:
                timing.refused = message["code"]  # before any reply: not counted as accepted
                timing.refusal = str(message.get("message", ""))
                timing.refused_at = time.monotonic()
            elif message["type"] == "error":
                timing.failed = message["code"]  # after replying: the stream failed
                timing.refusal = str(message.get("message", ""))
    except ConnectionClosed:
        pass
    finally:
        timing.close_code = ws.close_code
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender


async def _token(run: Round, secret_name: str) -> str:
    path = path_of("v1", "Secret", namespace=run.release.namespace, name=secret_name)
    secret = await run.api.get(path)
    assert secret is not None, secret_name
    return base64.b64decode(secret["data"]["token"]).decode()


async def _connect(run: Round, endpoint: str) -> socket.socket:
    """A socket to the endpoint's Service (its ClusterIP looked up once: a client resolves the
    Service's name once), retried while refused: a dedicated gateway's Service may lag its Ready
    (Endpoints, then kube-proxy's rules; until then kube-proxy rejects with "no route to host");
    the wait counts in Ready -> accepted."""
    service = endpoint.removeprefix("ws://").split(".", 1)[0]
    port = int(endpoint.split(":")[2].split("/")[0])
    if service not in run.services:
        path = path_of("v1", "Service", namespace=run.release.namespace, name=service)
        found = await run.api.get(path)
        assert found is not None, service
        run.services[service] = found["spec"]["clusterIP"]
    host = run.services[service]
    deadline = time.monotonic() + CONNECT_RETRY_S
    while True:
        try:
            return await asyncio.to_thread(run.release.cluster.connect, host, port)
        except OSError as error:
            if error.errno not in _NOT_YET or time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_SECONDS)


async def _send(
    ws: ClientConnection, frames: list[bytes], replied: asyncio.Event, reply_wait: float
) -> None:
    start = time.monotonic()
    for index, frame in enumerate(frames):
        delay = start + index * FRAME_SECONDS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await ws.send(frame)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(replied.wait(), reply_wait)
    await ws.close()


def _reconciles(release: Release) -> dict[str, float]:
    """The operator's reconcile-duration histogram for TranscriptionSessions, from its /metrics."""
    pod = release.get("pods", "-l", "app.kubernetes.io/component=operator")["items"][0]
    sock = release.cluster.connect(pod["status"]["podIP"], OPERATOR_METRICS_PORT)
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: operator\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    series: dict[str, float] = {}
    for line in b"".join(chunks).decode().splitlines():
        if line.startswith(RECONCILE) and 'kind="TranscriptionSession"' in line:
            key, value = line.rsplit(" ", 1)
            series[key] = float(value)
    return series


def _reconcile_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Count, mean and bucket bounds of p50/p99 of the reconciles between two scrapes."""
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    count = next((v for k, v in delta.items() if k.startswith(f"{RECONCILE}_count")), 0.0)
    total = next((v for k, v in delta.items() if k.startswith(f"{RECONCILE}_sum")), 0.0)
    buckets = sorted(
        (float(k.split('le="', 1)[1].split('"', 1)[0]), v)
        for k, v in delta.items()
        if k.startswith(f"{RECONCILE}_bucket")
    )

    def bound(share: float) -> float:
        return next((le for le, n in buckets if count and n >= share * count), float("nan"))

    return {
        "count": count,
        "mean_ms": 1000 * total / count if count else float("nan"),
        "p50_le_ms": 1000 * bound(0.5),
        "p99_le_ms": 1000 * bound(0.99),
    }


def _memory(release: Release, label: str) -> tuple[int, float]:
    """The pods with ``label`` and the RSS of their pod cgroups (``total_rss``: every container's,
    also across a restart); a pod whose cgroup is not there (not started, or gone) counts 0."""
    pods = release.get("pods", "-l", label)["items"]
    total = 0.0
    for pod in pods:
        root = _MEMORY_CGROUPS / release.cluster.netns / "kubepods"
        for cgroup in root.glob(f"**/pod{pod['metadata']['uid']}"):
            with contextlib.suppress(FileNotFoundError):
                total += _total_rss_mib(cgroup)
    return len(pods), total


def _restarts(release: Release, label: str) -> int:
    """Container restarts so far in the pods with ``label``."""
    pods = release.get("pods", "-l", label)["items"]
    return sum(
        int(status.get("restartCount", 0))
        for pod in pods
        for status in (pod.get("status") or {}).get("containerStatuses") or ()
    )


def _settled(timing: Timing) -> bool:
    return timing.accepted is not None or bool(timing.refused) or timing.ended


async def measure(
    release: Release,
    mode: str,
    sessions: int,
    rate: float,
    stream_seconds: float,
    reply_wait: float,
    settle_timeout: float = SETTLE_TIMEOUT_S,
) -> dict[str, Any]:
    """Create ``sessions`` sessions of ``mode`` at ``rate`` per second and stream each.

    Sessions neither accepted nor refused ``settle_timeout`` seconds after the last was created
    count as unsettled (their streams are cancelled); the sessions are deleted whatever happens.
    """
    try:
        result = await _measure(
            release, mode, sessions, rate, stream_seconds, reply_wait, settle_timeout
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the round's own error says more
            release.kubectl("delete", COLLECTION, "--all", "--wait=true", "--timeout=300s")
        raise
    release.kubectl("delete", COLLECTION, "--all", "--wait=true", "--timeout=600s")
    return result


async def _measure(
    release: Release,
    mode: str,
    sessions: int,
    rate: float,
    stream_seconds: float,
    reply_wait: float,
    settle_timeout: float,
) -> dict[str, Any]:
    placement = {"pool": "default"} if mode == "pooled" else {"dedicated": True}
    label = POOL_LABEL if mode == "pooled" else DEDICATED_LABEL
    timings = {f"{mode}-{i:03d}": Timing() for i in range(sessions)}
    before = await asyncio.to_thread(_reconciles, release)
    operator_cpu = await asyncio.to_thread(_cpu_seconds, release, OPERATOR_LABEL)
    own_cpu = time.process_time()
    lag = _LoopLag()
    lagging = asyncio.create_task(lag.run())
    info = release.cluster.connection_info()
    async with KubeClient.connect(info) as api:
        run = Round(release, api, _frames(stream_seconds), reply_wait)
        watching = asyncio.Event()
        follower = asyncio.create_task(_follow(info, release.namespace, timings, watching))
        await asyncio.wait_for(watching.wait(), 30.0)
        streams = []
        start = time.monotonic()
        for index, (name, timing) in enumerate(timings.items()):
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
            timing.applied = time.monotonic()
            await api.create(_body(name, release.namespace, placement))
            timing.created = time.monotonic()
            streams.append(asyncio.create_task(_stream(run, timing)))
        deadline = time.monotonic() + settle_timeout
        lowest_free = _available_gib()
        while not all(_settled(t) for t in timings.values()):
            if follower.done():
                raise RuntimeError("the watch of sessions ended") from follower.exception()
            if time.monotonic() > deadline:
                break
            lowest_free = min(lowest_free, _available_gib())
            await asyncio.sleep(0.1)
        settled_s = time.monotonic() - start
        unsettled = sum(not _settled(t) for t in timings.values())
        live = run.live
        rss = await asyncio.to_thread(_memory, release, label)
        restarts = await asyncio.to_thread(_restarts, release, label)
        reconciles = _reconcile_summary(before, await asyncio.to_thread(_reconciles, release))
        operator_cpu = await asyncio.to_thread(_cpu_seconds, release, OPERATOR_LABEL) - operator_cpu
        own_cpu = time.process_time() - own_cpu
        for task, timing in zip(streams, timings.values(), strict=True):
            if not _settled(timing):
                task.cancel()
        await asyncio.wait_for(
            asyncio.gather(*streams, return_exceptions=True), stream_seconds + reply_wait + 120.0
        )
        follower.cancel()
        lagging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        with contextlib.suppress(asyncio.CancelledError):
            await lagging
    summary = _summary(mode, sessions, timings, rss, live)
    return {
        **summary,
        "stream_s": stream_seconds,
        "reconciles": reconciles,
        "unsettled": unsettled,
        "restarts": restarts,
        "settled_s": settled_s,
        "operator_cpu_s": operator_cpu,
        "bench_cpu_s": own_cpu,
        "loop_lag_ms": lag.summary(),
        "lowest_free_gib": lowest_free,
    }


class _LoopLag:
    """How late this process's event loop wakes a task that sleeps ``LAG_TICK_S`` at a time: the
    moments it notes (Ready, connected, accepted) are late by as much."""

    def __init__(self) -> None:
        self.late: list[float] = []

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK_S)
            self.late.append(max(0.0, time.monotonic() - before - LAG_TICK_S))

    def summary(self) -> list[float]:
        return [*percentiles_ms(self.late, (50, 99)), 1000 * max(self.late, default=float("nan"))]


def _cpu_seconds(release: Release, label: str) -> float:
    """CPU time the pods with ``label`` have used so far (``cpuacct.usage`` of their cgroups)."""
    total = 0.0
    for pod in release.get("pods", "-l", label)["items"]:
        root = _CPUACCT / release.cluster.netns / "kubepods"
        (cgroup,) = list(root.glob(f"**/pod{pod['metadata']['uid']}"))
        total += int((cgroup / "cpuacct.usage").read_text()) / 1e9
    return total


def _available_gib() -> float:
    """The machine's MemAvailable."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _summary(
    mode: str, sessions: int, timings: dict[str, Timing], rss: tuple[int, float], live: int
) -> dict[str, Any]:
    ready = [t for t in timings.values() if t.ready is not None]
    accepted = [t for t in ready if t.accepted is not None and not t.refused]
    replied = [t for t in accepted if t.first_reply is not None]
    in_time = [t for t in accepted if t.accepted - t.applied < TARGET_S]  # type: ignore[operator]
    told = [t for t in ready if t.refused_at is not None and t.accepted is not None]
    closes = Counter(str(t.close_code) for t in accepted)
    return {
        "mode": mode,
        "sessions": sessions,
        "accepted": len(accepted),
        "replied": len(replied),
        "in_target": len(in_time),
        "refused": sorted(t.refused for t in timings.values() if t.refused),
        "failed": sorted(t.failed for t in accepted if t.failed),
        "closes": ", ".join(f"{code}: {n}" for code, n in sorted(closes.items())) or "none",
        "post_ms": percentiles_ms([t.created - t.applied for t in ready], (50, 99)),
        "ready_ms": percentiles_ms([t.ready - t.applied for t in ready], (50, 99)),  # type: ignore[operator]
        "connect_ms": percentiles_ms([t.connected - t.ready for t in accepted], (50, 99)),  # type: ignore[operator]
        "admit_ms": percentiles_ms([t.accepted - t.connected for t in accepted], (50, 99)),  # type: ignore[operator]
        "told_ms": percentiles_ms([t.refused_at - t.accepted for t in told], (50, 99)),  # type: ignore[operator]
        "refused_handshake_ms": percentiles_ms(
            [t.accepted - t.applied for t in told],  # type: ignore[operator]
            (50, 99),
        ),
        "accepted_ms": percentiles_ms([t.accepted - t.applied for t in accepted], (50, 99)),  # type: ignore[operator]
        "reply_ms": percentiles_ms([t.first_reply - t.accepted for t in replied], (50, 99)),  # type: ignore[operator]
        "total_ms": percentiles_ms([t.first_reply - t.applied for t in replied], (50, 99)),  # type: ignore[operator]
        "pods": rss[0],
        "rss_mib": rss[1],
        "live": live,
        "load": " ".join(Path("/proc/loadavg").read_text().split(" ", 3)[:3]),
        "each_ms": {
            name: [
                None if moment is None else round((moment - t.applied) * 1000)
                for moment in (t.created, t.ready, t.connected, t.accepted, t.first_reply)
            ]
            + ([t.refused or t.failed, t.refusal] if t.refused or t.failed else [])
            for name, t in timings.items()
        },
    }


@dataclass(frozen=True)
class Install:
    """What the release is installed with beyond tests/cluster/values.yaml (None: its value)."""

    pool_cpu: str | None = None
    operator_cpu: str | None = None
    gateway_cpu: str | None = None
    pool_max_lag: float | None = None

    def values(self) -> dict[str, Any]:
        """The chart values that say it, the pool's stream cap included."""
        pool: dict[str, Any] = {"maxConnections": POOL_STREAMS}
        if self.pool_cpu is not None:
            pool["resources"] = {"requests": {"cpu": self.pool_cpu}}
        if self.pool_max_lag is not None:
            pool["maxLagSeconds"] = self.pool_max_lag
        values: dict[str, Any] = {"pools": {"gateways": {"default": pool}}}
        operator: dict[str, Any] = values.setdefault("operator", {})
        if self.operator_cpu is not None:
            operator["resources"] = {"requests": {"cpu": self.operator_cpu}}
        if self.gateway_cpu is not None:  # the node's 2 CPUs of requests must hold every pod
            operator["gateway"] = {
                "resources": {"cpuRequest": self.gateway_cpu},
                "persisterResources": {"cpuRequest": self.gateway_cpu},
            }
        return values

    def describe(self) -> str:
        """The report's words for it, each starting with a comma."""
        return (
            (f", each gateway container requesting {self.pool_cpu} CPU" if self.pool_cpu else "")
            + (
                f", the pool's gateways refusing new streams past {self.pool_max_lag:g} s of lag"
                " (0: never)"
                if self.pool_max_lag is not None
                else ""
            )
            + (f", the operator requesting {self.operator_cpu} CPU" if self.operator_cpu else "")
            + (
                f", each dedicated pod's containers {self.gateway_cpu} CPU"
                if self.gateway_cpu
                else ""
            )
        )


def _report(results: list[dict[str, Any]], command: str, load: str, install: Install) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Pool readiness: pooled against dedicated sessions on a real node",
        "",
        f"Measured {when} with `{command}` on {platform.node()}, {os.cpu_count()} CPUs shared "
        f"with other work (load average before the run: {load}), Python "
        f"{platform.python_version()}, Kubernetes v1.20.2 from tests/cluster/harness.py, the "
        "chart installed from the images built here with tests/cluster/values.yaml and the "
        "default pool's two gateways taking up to 100 streams each" + install.describe() + ".",
        "",
        "Sessions are created through the API by this process (one POST each, at the given rate; "
        "no kubectl process per session). **apply -> accepted** is the first accepted audio: "
        "until the WebSocket handshake to `status.endpoint` completes. The gateway completes a "
        "handshake only once it has admitted the connection (session registered with the pool, "
        "its token, lag, connection cap; a pool gateway whose watch has not delivered the "
        "registration yet waits up to 2 s for it), and a refused connection hears why as the "
        "first message after its handshake; the client sends its first frame at once after the "
        "handshake. A session whose first message was an error is counted refused, not accepted. "
        "apply -> first reply (the first partial or final for audio streamed at real time) "
        "includes the engine's first decoding window.",
        "",
        "apply -> Ready is the operator's time (until this process's watch of the sessions "
        "delivers the session Ready); Ready -> connected the client's (read the token Secret, "
        "TCP connect through the Service from the node's network namespace, retried while "
        "refused); connected -> accepted the WebSocket handshake, which holds the gateway's "
        "admission. Each time cell is p50 / p99 over the sessions it applies to; "
        f"'accepted < {TARGET_S:g} s' counts, among all sessions created, those accepted within "
        "the target. For refused sessions: when their handshake completed (apply -> handshake) "
        "and how long after it the refusal came (handshake -> refusal; a refusal at admission "
        "comes at once, one later in the stream after some audio).",
        "",
        "| mode | stream | sessions | POST | apply->Ready | Ready->connected | connected->accepted "
        f"| **apply->accepted** | accepted < {TARGET_S:g} s | refused | refused: apply->handshake "
        "| handshake->refusal | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(pair: list[float]) -> str:
        return f"{pair[0]:.0f} / {pair[1]:.0f} ms"

    for r in results:
        lines.append(
            f"| {r['mode']} | {r['stream_s']:g} s | {r['sessions']} | {cell(r['post_ms'])} "
            f"| {cell(r['ready_ms'])} | {cell(r['connect_ms'])} | {cell(r['admit_ms'])} "
            f"| **{cell(r['accepted_ms'])}** | {r['in_target']} of {r['sessions']} "
            f"| {len(r['refused'])} {sorted(set(r['refused']))} "
            f"| {cell(r['refused_handshake_ms'])} | {cell(r['told_ms'])} | {r['load']} |"
        )
    lines += [
        "",
        "The streams: accepted -> first reply (the first partial or final; it includes the "
        "engine's first decoding window) and apply -> first reply over the accepted sessions that "
        "got one; over each accepted stream's whole life, the errors told after its first reply "
        "(a stream that failed mid-way) and the close codes the streams ended with (1000: the "
        "client closed after its audio); and, once every session was accepted or refused, the "
        "streams live at that moment, the gateway pods carrying them and their RSS (`total_rss` "
        "of their memory cgroups, gateway and persister containers):",
        "",
        "| mode | stream | accepted->first reply | apply->first reply | replied | failed after "
        "replying | closed with | live streams | gateway pods | their RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['stream_s']:g} s | {cell(r['reply_ms'])} | {cell(r['total_ms'])} "
            f"| {r['replied']} of {r['accepted']} | {len(r['failed'])} {sorted(set(r['failed']))} "
            f"| {r['closes']} | {r['live']} | {r['pods']} | {r['rss_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "The operator's own reconcile time over the same window, from the delta of its "
        f"`{RECONCILE}` histogram (kind TranscriptionSession; a bound is the histogram bucket "
        "that holds the quantile; drift passes, if any fell in the window, are included):",
        "",
        "| mode | stream | reconciles | mean | p50 <= | p99 <= |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        rec = r["reconciles"]
        lines.append(
            f"| {r['mode']} | {r['stream_s']:g} s | {rec['count']:.0f} | {rec['mean_ms']:.0f} ms "
            f"| {rec['p50_le_ms']:.0f} ms | {rec['p99_le_ms']:.0f} ms |"
        )
    lines += [
        "",
        "Each round's resources, from just before its first POST until every session was accepted or refused "
        "(or the settle timeout passed: the sessions then neither are unsettled): the CPU time the "
        "operator's pod used (`cpuacct.usage` of its cgroup) and this process (which sends every "
        "stream), how late this process's event loop woke a task sleeping 10 ms at a time "
        "(p50 / p99 / max: the moments it notes are late by as much), and the machine's lowest "
        "MemAvailable while it waited:",
        "",
        "| mode | stream | sessions | settled after | unsettled | operator CPU | bench CPU "
        "| bench loop lag | lowest MemAvailable | gateway container restarts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lag = r["loop_lag_ms"]
        lines.append(
            f"| {r['mode']} | {r['stream_s']:g} s | {r['sessions']} | {r['settled_s']:.1f} s "
            f"| {r['unsettled']} | {r['operator_cpu_s']:.1f} s | {r['bench_cpu_s']:.1f} s "
            f"| {lag[0]:.0f} / {lag[1]:.0f} / {lag[2]:.0f} ms | {r['lowest_free_gib']:.1f} GiB "
            f"| {r.get('restarts', 'n/a')} |"
        )
    capped = [r["capped"] for r in results if r.get("capped")]
    if capped:
        lines += ["", *capped]
    lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _release(install: Install) -> Iterator[Release]:
    # installed with the streams allowed (no upgrade: a rollout races kubectl wait's pod list)
    with (
        running_cluster() as cluster,
        installed_release(cluster, values=install.values()) as release,
    ):
        yield release


def main(argv: list[str]) -> int:
    """Run both modes for each stream length and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.pool_readiness")
    parser.add_argument("--pooled", type=int, default=100)
    parser.add_argument("--dedicated", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="sessions created per second")
    parser.add_argument(
        "--stream-seconds",
        type=float,
        nargs="+",
        default=[1.0, 3.0, 30.0],
        help="audio each stream sends at real time; one round per length",
    )
    parser.add_argument(
        "--reply-wait",
        type=float,
        default=10.0,
        help="after its audio, a stream waits this long at most for its first reply",
    )
    parser.add_argument(
        "--pool-cpu",
        help="CPU request of each pool gateway container (default: tests/cluster/values.yaml's)",
    )
    parser.add_argument(
        "--pool-max-lag",
        type=float,
        help="the pool gateways' lag limit, EARSHOT_MAX_LAG_SECONDS (0: never refuse for lag, to "
        "hold every stream whatever the engine's pace; default: the chart's)",
    )
    parser.add_argument(
        "--operator-cpu",
        help="CPU request of the operator container (default: tests/cluster/values.yaml's)",
    )
    parser.add_argument(
        "--gateway-cpu",
        help="CPU request of each dedicated gateway pod's gateway and persister containers "
        "(default: tests/cluster/values.yaml's)",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=SETTLE_TIMEOUT_S,
        help="after the last session is created, wait this long at most for every session to be "
        "accepted or refused; the rest count as unsettled",
    )
    parser.add_argument(
        "--min-free-gib",
        type=float,
        default=3.0,
        help="create only as many dedicated sessions as leave this much MemAvailable, at "
        "--dedicated-pod-mib each",
    )
    parser.add_argument(
        "--dedicated-pod-mib",
        type=float,
        default=180.0,
        help="memory one dedicated session's pod is counted to take (measured: about 166 MiB)",
    )
    parser.add_argument("--report", type=Path, default=REPORT, help="where the report goes")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.pool_readiness", *argv])
    load = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    results = []
    install = Install(args.pool_cpu, args.operator_cpu, args.gateway_cpu, args.pool_max_lag)
    with _release(install) as release:
        for seconds in args.stream_seconds:
            for mode, count in (("pooled", args.pooled), ("dedicated", args.dedicated)):
                capped = ""
                if mode == "dedicated" and count:
                    free = _available_gib()
                    fits = int((free - args.min_free_gib) * 1024 // args.dedicated_pod_mib)
                    if fits < count:
                        capped = (
                            f"Dedicated sessions of the {seconds:g} s round: {max(fits, 0)} "
                            f"instead of {count}: MemAvailable was {free:.1f} GiB before it, "
                            f"{args.min_free_gib:g} GiB is kept free and a dedicated pod is "
                            f"counted at {args.dedicated_pod_mib:g} MiB."
                        )
                        print(capped, flush=True)
                        count = max(fits, 0)
                if count:
                    result = asyncio.run(
                        measure(
                            release,
                            mode,
                            count,
                            args.rate,
                            seconds,
                            args.reply_wait,
                            args.settle_timeout,
                        )
                    )
                    result["capped"] = capped
                    print(json.dumps(result), flush=True)
                    results.append(result)
                    args.report.write_text(_report(results, command, " ".join(load), install))
    print(args.report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
