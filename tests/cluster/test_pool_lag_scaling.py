"""A gateway pool scaling up on its lag, on the real single-node cluster.

The chart's default pool, autoscaled on both of its metrics, with the active-streams target out of
reach (1000 per pod) so that only ``earshot_gateway_lag_seconds`` can raise it. The pool's gateway
container is held to a CPU limit (a CFS quota the kubelet sets) that a handful of real-time streams
exceed, and refuses no stream for lag (``maxLagSeconds: 0``), so the streams it admits put its one
process behind real time: its event loop wakes late, which is the lag it exports.

What this shows: at rest the HPA reads a lag under its target and keeps one pod; with the streams
live, the HPA controller (kube-controller-manager, reading through tests/cluster/custom_metrics.py
as it would through prometheus-adapter) raises the Deployment to two pods, and the readings it
scaled for (its status when it first wanted two pods) are the lag above its target and the
streams far below theirs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.release import RELEASE, Release, installed_release
from tests.cluster.test_pool_scaling import (
    DEPLOYMENT,
    HPA,
    _current_metrics,
    _eventually,
    _readings,
    _replicas,
    _start_streams,
    _stop_all,
    _streaming,
)
from tests.cluster.test_pools import POOL_LABEL

LAG_TARGET_S: Final = 0.2
#: Out of reach: the streams alone never raise the pool.
STREAMS_TARGET: Final = 1000
#: Enough real-time streams to need more CPU than the gateway's limit gives it.
STREAMS: Final = 16
#: The gateway container's CPU (request and limit): enough to start within the startup probe's 5
#: minutes, too little for STREAMS real-time streams.
CPU_LIMIT: Final = "20m"
#: Each stream sends the 9.6 s sample this many times: long enough for the lag to build, the HPA
#: to read it (a 3 s sync here) and raise the Deployment.
REPEAT: Final = 6


_CGROUPS: Final = Path("/sys/fs/cgroup")


def _gateway_cpu(release: Release, name: str) -> tuple[float, int]:
    """A pool pod's gateway container: its CPU seconds so far, the CFS periods it was throttled in."""
    pod = release.get("pod", name)
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "gateway"]
    container = status["containerID"].removeprefix("containerd://")
    pattern = f"kubepods/**/pod{pod['metadata']['uid']}/{container}"
    (cpu,) = (_CGROUPS / "cpu" / release.cluster.netns).glob(pattern)
    (cpuacct,) = (_CGROUPS / "cpuacct" / release.cluster.netns).glob(pattern)
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    return int((cpuacct / "cpuacct.usage").read_text()) / 1e9, int(stat["nr_throttled"])


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart with the default pool autoscaled and CPU-limited; every pod Ready."""
    pool = {
        "maxLagSeconds": 0,
        "maxConnections": STREAMS,
        # requests at the limit: the gateway gets its 20m on a busy node too, and no more
        "resources": {
            "requests": {"cpu": CPU_LIMIT, "memory": "64Mi"},
            "limits": {"cpu": CPU_LIMIT},
        },
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 2,
            "targetActiveStreams": STREAMS_TARGET,
            "targetLagSeconds": LAG_TARGET_S,
            # the chart's 300 s: once the HPA wants two pods it keeps wanting them while the test
            # looks, even if the lag dips under its target meanwhile
        },
    }
    values = {"pools": {"gateways": {"default": pool}}}
    with installed_release(cluster, namespace="earshot-lag-scaling", values=values) as installed:
        yield installed
        installed.helm("uninstall", RELEASE, "--wait")


def test_a_pool_behind_real_time_scales_up_on_its_lag(release: Release, tmp_path: Path) -> None:
    at_rest = _eventually(lambda: _current_metrics(release), "read by the HPA", 60.0)
    assert at_rest["earshot_gateway_lag_seconds"] < LAG_TARGET_S, at_rest
    assert release.get("deployment", DEPLOYMENT)["spec"]["replicas"] == 1
    (first,) = release.get("pods", "-l", POOL_LABEL)["items"]
    pod_name = first["metadata"]["name"]
    cpu_before = _gateway_cpu(release, pod_name)
    seen: list[dict[str, float] | None] = []

    def decided() -> dict[str, Any] | None:
        """The HPA's status once it wants two pods (its readings then are what it scaled for)."""
        status: dict[str, Any] = release.get(HPA, DEPLOYMENT)["status"]
        seen.append(_readings(status))
        return status if status.get("desiredReplicas") == 2 else None

    clients = _start_streams(release, tmp_path, count=STREAMS, repeat=REPEAT)
    started = time.monotonic()
    try:
        try:
            decision = _eventually(decided, "scaling up", 90.0)
        except AssertionError as error:
            raise AssertionError(f"{error}; the HPA read, a second apart: {seen}") from None
        decided_s = time.monotonic() - started
        _eventually(lambda: _replicas(release, 2), "scaled up", 30.0)
        # the streams were admitted and recognised: the lag is theirs, not a refusal's
        _eventually(lambda: _streaming(tmp_path, [name for name, _ in clients]), "told", 60.0)
    finally:
        _stop_all(clients)
    cpu, throttled = (
        a - b for a, b in zip(_gateway_cpu(release, pod_name), cpu_before, strict=True)
    )
    readings = _readings(decision)
    print(
        f"at rest the HPA read {at_rest}; {STREAMS} streams started -> the HPA wanted 2 pods after"
        f" {decided_s:.1f} s, reading {readings}; the first pod's gateway used {cpu:.1f} CPU s,"
        f" throttled in {throttled} periods"
    )
    # What the HPA scaled for, from its status. Its SuccessfulRescale event is not asserted: it was
    # missing in runs of this test where the HPA had first told FailedGetPodsMetric events at every
    # sync while the pool started, most likely dropped by client-go's event spam filter (a burst
    # of 25 per object, then one per 5 minutes).
    assert readings is not None, decision
    assert readings["earshot_gateway_lag_seconds"] > LAG_TARGET_S, readings
    assert readings["earshot_active_streams"] < STREAMS_TARGET, readings
