"""A gateway pool scaling up under load on the real single-node cluster.

The chart's default pool with autoscaling on (one pod at least, three at most, a target of two
active streams per pod); the HorizontalPodAutoscaler the chart renders, run by the HPA controller
of kube-controller-manager, reads both metrics it asks for (``earshot_active_streams`` and
``earshot_gateway_lag_seconds``) through the custom metrics API of the test cluster
(tests/cluster/custom_metrics.py: each pod's own /metrics, served the way prometheus-adapter
serves Prometheus series). The lag target is set out of reach, so only the streams scale the pool.

What this shows: at rest the HPA reads both metrics of the one pod; five pooled sessions streaming
at real time through the pool's Service (all landing on that pod) make the HPA raise the
Deployment to three pods while the streams run; the kubelet makes the new pods Ready; no stream
is cut by the scale-up, every final is stored. Two more sessions stream meanwhile, each straight
to one of the two pods a scale-down to one gives up (by pod IP, reconnecting through the pool's
Service). Once the load ends the HPA gives those pods up, one a minute, while these two streams
are live: each is drained (its last finals told, then 1012), reconnects with its session id and
ends normally on the pod kept; its finals are numbered with no gap or repeat and each is stored
once in MariaDB.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.release import RELEASE, Release, client_argv, installed_release
from tests.cluster.test_pools import POOL_LABEL, _apply_pooled, _check_stored_once
from tests.cluster.test_sre_path import _closes

DEPLOYMENT: Final = f"{RELEASE}-pool-default"
#: The version the chart renders on Kubernetes 1.20: autoscaling/v1 (kubectl's default) has no
#: currentMetrics in its status.
HPA: Final = "horizontalpodautoscalers.v2beta2.autoscaling"
STREAMS: Final = 5
TARGET_STREAMS: Final = 2
MAX_REPLICAS: Final = 3
#: Each stream sends the 9.6 s sample this many times at real time: long enough for the HPA to
#: see it (a 3 s sync here) and for the new pods to start.
REPEAT: Final = 8
#: The bundled sample's length (earshot.cli.demoing.sample_audio).
SAMPLE_S: Final = 9.6
#: The chart's scale-down policy gives up one pod per this period.
SCALE_DOWN_PERIOD_S: Final = 60.0
#: What a long stream sends beyond the load's rest and one scale-down period: the HPA's syncs
#: (3 s) and metric reads, a pod's drain (seconds), the reconnect and a final on the pod kept.
LONG_SLACK_S: Final = 30.0
POOL_PORT: Final = 8000
_T = TypeVar("_T")


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart with the default pool autoscaled; every pod Ready; uninstalled afterwards."""
    autoscaling = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": MAX_REPLICAS,
        "targetActiveStreams": TARGET_STREAMS,
        "targetLagSeconds": 30,
        "scaleDownStabilizationSeconds": 0,
    }
    values = {"pools": {"gateways": {"default": {"autoscaling": autoscaling}}}}
    with installed_release(cluster, namespace="earshot-scaling", values=values) as installed:
        yield installed
        installed.helm("uninstall", RELEASE, "--wait")


def _eventually(probe: Callable[[], _T | None], what: str, timeout_s: float) -> _T:
    deadline = time.monotonic() + timeout_s
    while (result := probe()) is None:
        assert time.monotonic() < deadline, f"not {what} in {timeout_s} s"
        time.sleep(1.0)
    return result


def _current_metrics(release: Release) -> dict[str, float] | None:
    """The HPA's last reading of each Pods metric (averages per pod), once it has both."""
    return _readings(release.get(HPA, DEPLOYMENT).get("status", {}))


def _readings(status: dict[str, Any]) -> dict[str, float] | None:
    """An HPA status's reading of each Pods metric (averages per pod), if it has both."""
    readings = _pods_readings(status)
    return readings if len(readings) == 2 else None


def _pods_readings(status: dict[str, Any]) -> dict[str, float]:
    """The Pods metrics an HPA status has a reading of (one it could not read is left out)."""
    return {
        m["pods"]["metric"]["name"]: _quantity(m["pods"]["current"]["averageValue"])
        for m in status.get("currentMetrics") or []
        if m.get("type") == "Pods" and "current" in m["pods"]
    }


def _quantity(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _replicas(release: Release, wanted: int) -> dict[str, Any] | None:
    deployment = release.get("deployment", DEPLOYMENT)
    return deployment if deployment["spec"]["replicas"] == wanted else None


def _ready_pods(release: Release, count: int) -> list[dict[str, Any]] | None:
    pods = [
        pod
        for pod in release.get("pods", "-l", POOL_LABEL)["items"]
        if not pod["metadata"].get("deletionTimestamp")
    ]
    ready = [
        pod
        for pod in pods
        for condition in pod["status"].get("conditions", [])
        if condition["type"] == "Ready" and condition["status"] == "True"
    ]
    return ready if len(pods) == len(ready) == count else None


def test_the_hpa_reads_both_pool_metrics_from_the_custom_metrics_api(release: Release) -> None:
    metrics = _eventually(lambda: _current_metrics(release), "read by the HPA", 60.0)
    assert metrics["earshot_active_streams"] == 0.0, metrics
    assert metrics["earshot_gateway_lag_seconds"] < 30, metrics
    assert release.get("deployment", DEPLOYMENT)["spec"]["replicas"] == 1
    (pod,) = release.get("pods", "-l", POOL_LABEL)["items"]
    listed = json.loads(
        release.cluster.kubectl(
            "get",
            "--raw",
            f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{release.namespace}/pods/*/"
            f"earshot_active_streams?labelSelector={POOL_LABEL}",
        )
    )
    assert [(i["describedObject"]["name"], _quantity(i["value"])) for i in listed["items"]] == [
        (pod["metadata"]["name"], 0.0)
    ]


def _register(release: Release, count: int, repeat: int) -> list[tuple[str, list[str]]]:
    """Register ``count`` pooled sessions: each one's name and the command line of its caller."""
    callers = []
    for name in (f"load-{index}" for index in range(count)):
        endpoint, token = _apply_pooled(release, name)
        callers.append((name, client_argv(endpoint, f"--token={token}", "--repeat", str(repeat))))
    return callers


def _start(
    release: Release, folder: Path, name: str, argv: list[str]
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a caller in the cluster's namespace, its messages written to ``<name>.jsonl``."""
    with (folder / f"{name}.jsonl").open("wb") as out:
        return name, subprocess.Popen(release.cluster.exec_inside(argv), stdout=out)


def _start_streams(
    release: Release, folder: Path, count: int = STREAMS, repeat: int = REPEAT
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Register every session first, then start their callers together (one load step)."""
    return [_start(release, folder, name, argv) for name, argv in _register(release, count, repeat)]


def _rescales(release: Release) -> list[str]:
    """The HPA controller's SuccessfulRescale events of the pool, oldest first."""
    selector = f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={DEPLOYMENT}"
    events = release.get("events", "--field-selector", selector)["items"]
    ordered = sorted(events, key=lambda e: e.get("firstTimestamp") or "")
    return [e["message"] for e in ordered if e["reason"] == "SuccessfulRescale"]


def _messages(folder: Path, name: str) -> list[dict[str, Any]]:
    lines = (folder / f"{name}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _given_up_first(pods: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pods a scale-down from these Ready pods to one gives up, and the one it keeps.

    The ReplicaSet controller (kube-controller-manager 1.20, ``controller.ActivePodsWithRanks``)
    removes, among Ready pods on one node, the one Ready the shortest time first, then the one
    with more container restarts, then the newest.
    """

    def rank(pod: dict[str, Any]) -> tuple[str, int, str]:
        (ready,) = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        restarts = max(s["restartCount"] for s in pod["status"]["containerStatuses"])
        return ready["lastTransitionTime"], restarts, pod["metadata"]["creationTimestamp"]

    *given_up, kept = sorted(pods, key=rank, reverse=True)
    return given_up, kept


def _start_long_streams(
    release: Release,
    folder: Path,
    sessions: list[tuple[str, str, str]],
    pods: list[dict[str, Any]],
    *,
    load_left_s: float,
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """One stream straight to each pod (its IP), reconnecting through the pool's Service.

    ``sessions`` are (name, endpoint, token) of registered sessions. Each stream must still be
    live when its pod goes: the first pod once the load has ended (no stabilization window here),
    the second one policy period later; then come that pod's drain, the reconnect and at least
    one final told on the pod kept.
    """
    repeat = math.ceil((load_left_s + SCALE_DOWN_PERIOD_S + LONG_SLACK_S) / SAMPLE_S)
    clients = []
    for (name, endpoint, token), pod in zip(sessions, pods, strict=True):
        path = endpoint.split("/", 3)[3]
        argv = client_argv(
            f"ws://{pod['status']['podIP']}:{POOL_PORT}/{path}",
            f"--token={token}",
            "--repeat", str(repeat),
            "--reconnect", "--reconnect-url", endpoint,
            "--reconnect-for", str(repeat * SAMPLE_S + LONG_SLACK_S),
        )  # fmt: skip
        clients.append(_start(release, folder, name, argv))
    return clients


def _streaming(folder: Path, names: list[str]) -> bool | None:
    """True once every named stream has been told a partial or final (admitted, recognised)."""
    told = ('"type": "partial"', '"type": "final"')
    texts = [(folder / f"{name}.jsonl").read_text() for name in names]
    return all(any(t in text for t in told) for text in texts) or None


def _wait_all(clients: list[tuple[str, subprocess.Popen[bytes]]], timeout_s: float) -> None:
    for _, client in clients:
        client.wait(timeout=timeout_s)


def _stop_all(clients: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, client in clients:
        client.kill()
        client.wait()


def test_a_pool_scales_up_under_load_and_back_down_draining_live_streams(
    release: Release, tmp_path: Path
) -> None:
    long_names = [f"long-{index}" for index in range(MAX_REPLICAS - 1)]
    sessions = [(name, *_apply_pooled(release, name)) for name in long_names]
    endpoints = {name: endpoint for name, endpoint, _ in sessions}
    clients = _start_streams(release, tmp_path)
    started = time.monotonic()
    long_clients: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        _eventually(lambda: _replicas(release, MAX_REPLICAS), "scaled up", 90.0)
        scaled = time.monotonic()
        readings = _current_metrics(release)
        pods = _eventually(lambda: _ready_pods(release, MAX_REPLICAS), "Ready", 120.0)
        ready = time.monotonic()
        # Streams on the two pods a scale-down to one gives up, none on the pod it keeps: at two
        # streams per pod, three live streams hold the pool at two pods, two let it go to one.
        given_up, kept = _given_up_first(pods)
        load_left_s = started + REPEAT * SAMPLE_S - ready
        long_clients = _start_long_streams(
            release, tmp_path, sessions, given_up, load_left_s=load_left_s
        )
        _eventually(lambda: _streaming(tmp_path, long_names), "streaming", 30.0)
        still_streaming = [name for name, client in clients if client.poll() is None]
        rescales = _rescales(release)
        _wait_all(clients, 300.0)
        load_ended = time.monotonic()
        # one pod given up at a time, a minute apart (the chart's scale-down policy)
        (left,) = _eventually(lambda: _ready_pods(release, 1), "scaled back down", 180.0)
        one_pod = time.monotonic()
        _wait_all(long_clients, 300.0)
    finally:
        _stop_all(clients + long_clients)
    print(
        f"streams started -> {MAX_REPLICAS} replicas {scaled - started:.1f} s -> "
        f"all Ready {ready - started:.1f} s -> load ended {load_ended - started:.1f} s -> "
        f"1 pod {one_pod - started:.1f} s -> long streams ended {time.monotonic() - started:.1f} s;"
        f" HPA read {readings}; rescales {_rescales(release)}"
    )
    assert still_streaming == [name for name, _ in clients], "the load ended before the scale-up"
    # every step up (there may be two: 1 -> 2 -> 3) was made for the streams, the last to 3
    assert rescales, "no rescale event"
    assert all(
        r.endswith("; reason: pods metric earshot_active_streams above target") for r in rescales
    ), rescales
    assert f"New size: {MAX_REPLICAS};" in rescales[-1], rescales
    assert all(pod["spec"]["nodeName"] == "earshot-node" for pod in pods)
    for name, _ in clients:
        messages = _messages(tmp_path, name)
        closes = _closes(messages)
        assert [(c["code"], c["sent"]) for c in closes] == [(1000, closes[0]["total"])], messages
        finals = [m for m in messages if m["type"] == "final"]
        assert finals, messages
        _check_stored_once(release, name, finals)
    # the HPA gave both pods up, for the load's end, while the long streams were live on them
    assert _rescales(release)[-2:] == [
        f"New size: {size}; reason: All metrics below target" for size in (2, 1)
    ], _rescales(release)
    assert left["metadata"]["name"] == kept["metadata"]["name"], "another pod was kept"
    for name, _ in long_clients:
        messages = _messages(tmp_path, name)
        closes = _closes(messages)
        # drained (its last finals told, then 1012), reopened through the Service, perhaps drained
        # again or refused while the old pod still held the session (1013 "session in use", not an
        # overload's 1013), ended on the kept pod
        assert (closes[0]["code"], closes[0]["reason"]) == (1012, "service restart"), messages
        between = {(c["code"], c["reason"]) for c in closes[1:-1]}
        assert between <= {(1012, "service restart"), (1013, "session in use")}, closes
        assert (closes[-1]["code"], closes[-1]["sent"]) == (1000, closes[-1]["total"]), closes
        assert {c["url"] for c in closes[1:]} == {endpoints[name]}, closes  # the Service
        ends = [index for index, m in enumerate(messages) if m["type"] == "closed"]
        last = messages[ends[-2] : ends[-1]]
        assert [m for m in last if m["type"] == "final"], f"no final on the kept pod: {messages}"
        finals = [m for m in messages if m["type"] == "final"]
        _check_stored_once(release, name, finals)
