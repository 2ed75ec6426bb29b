"""How the operator copes with a burst: N TranscriptionSessions applied at once.

Starts the e2e control plane (etcd, kube-apiserver, kube-controller-manager; built once and
cached by tests/e2e/controlplane/build.sh) and the operator as its own process with its
least-privilege token and the default 60 s drift interval, then creates N sessions concurrently
and reports:

* apply time: from the first create request to the last one answered;
* time to all Provisioning: from the first create request until every session's status says
  Provisioning (its Secret, ConfigMap, Service and Deployment exist);
* operator RSS before the burst, after it, and its peak (VmHWM);
* operator CPU seconds spent on the burst;
* reconcile duration p50/p95 from the operator's own histogram.

Usage: ``python -m bench.operator_scale [--sessions 200]``.
Writes ``bench/reports/operator_scale.md``.

``--pool-change`` measures instead how long a gateway pool's change takes to reach the sessions on
it: N sessions placed on the watched pool (its Deployment's pod pending: ``PoolUnavailable``), then
the pool's pod reports an image it cannot pull, as a kubelet would, and the time until every
session says ``ImagePullBackOff`` is taken. It holds the pool check interval (1 s here) and the
re-reconcile of the N sessions. Writes ``bench/reports/operator_pool_change.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from earshot_operator.clients import KubeClient
from tests.e2e.controlplane import operators
from tests.e2e.controlplane.cluster import ControlPlane, running_control_plane
from tests.e2e.controlplane.operators import OperatorProcess, operator_kubeconfig

REPORT = Path(__file__).parent / "reports" / "operator_scale.md"
POOL_CHANGE_REPORT = Path(__file__).parent / "reports" / "operator_pool_change.md"
NAMESPACE = "scale"
POOL_CHECK_INTERVAL_S = 1.0
POOL_LABELS = {"app.kubernetes.io/name": "earshot", "app.kubernetes.io/component": "pool-bench"}


@dataclasses.dataclass(frozen=True)
class Result:
    """One burst's measurements."""

    sessions: int
    apply_s: float
    provisioning_s: float
    rss_idle_mib: float
    rss_after_mib: float
    rss_peak_mib: float
    cpu_s: float
    control_plane_cpu_s: dict[str, float]
    reconcile_p50_s: float
    reconcile_p95_s: float


def _proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _control_plane_pids(plane: ControlPlane) -> dict[str, int]:
    # every server's command line names a path inside the control plane's folder
    pids = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(plane.folder).encode() in arg for arg in argv[1:]):
            pids[Path(argv[0].decode()).name] = int(proc.name)
    return pids


def _reconcile_quantiles(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name.endswith("_bucket") and labels.get("kind") == "TranscriptionSession":
                buckets.append((float(labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1]

    def quantile(q: float) -> float:
        # upper bound of the bucket holding the q-th observation
        return next(le for le, count in buckets if count >= q * total)

    return quantile(0.5), quantile(0.95)


def _session(index: int) -> dict[str, object]:
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": f"call-{index:04d}", "namespace": NAMESPACE},
        "spec": {"userId": f"user-{index % 17}", "audio": {"codec": "ulaw"}},
    }


async def _burst(plane: ControlPlane, count: int) -> tuple[float, float]:
    async with KubeClient.connect(plane.connection_info()) as api:
        start = time.perf_counter()
        await asyncio.gather(*(api.create(_session(i)) for i in range(count)))
        applied = time.perf_counter() - start
        path = f"/apis/earshot.dev/v1alpha1/namespaces/{NAMESPACE}/transcriptionsessions"
        while True:
            # from the watch cache, four times a second: the bench must not load the apiserver
            answer = await api.request("GET", path, params={"resourceVersion": "0"})
            phases = [(item.get("status") or {}).get("phase") for item in answer["items"]]
            if phases.count("Provisioning") == count:
                return applied, time.perf_counter() - start
            await asyncio.sleep(0.25)


def measure(count: int) -> Result:
    """Run one burst of ``count`` sessions on a fresh control plane."""
    with running_control_plane() as plane:
        plane.kubectl("create", "namespace", NAMESPACE)
        kubeconfig = operator_kubeconfig(plane)
        log = plane.folder / "operator.log"
        with OperatorProcess(kubeconfig, log=log, drift_interval_s=60.0) as operator:
            time.sleep(2.0)
            rss_idle = _proc_status(operator.pid, "VmRSS")
            servers = {
                name: pid
                for name, pid in _control_plane_pids(plane).items()
                if name in ("etcd", "kube-apiserver", "kube-controller-manager")
            }
            before = {name: _cpu_seconds(pid) for name, pid in servers.items()}
            cpu_before = _cpu_seconds(operator.pid)
            applied, provisioning = asyncio.run(_burst(plane, count))
            cpu = _cpu_seconds(operator.pid) - cpu_before
            server_cpu = {name: _cpu_seconds(pid) - before[name] for name, pid in servers.items()}
            p50, p95 = _reconcile_quantiles(operator.metrics_url)
            return Result(
                sessions=count,
                apply_s=applied,
                provisioning_s=provisioning,
                rss_idle_mib=rss_idle,
                rss_after_mib=_proc_status(operator.pid, "VmRSS"),
                rss_peak_mib=_proc_status(operator.pid, "VmHWM"),
                cpu_s=cpu,
                control_plane_cpu_s=server_cpu,
                reconcile_p50_s=p50,
                reconcile_p95_s=p95,
            )


def _pool_deployment() -> dict[str, object]:
    container = {"name": "gateway", "image": "registry.invalid/earshot:0"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": operators.WATCHED_POOL_DEPLOYMENT, "namespace": operators.NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": POOL_LABELS},
            "template": {"metadata": {"labels": POOL_LABELS}, "spec": {"containers": [container]}},
        },
    }


async def _reasons(api: KubeClient) -> list[str | None]:
    # from the watch cache: the bench must not load the apiserver
    path = f"/apis/earshot.dev/v1alpha1/namespaces/{NAMESPACE}/transcriptionsessions"
    answer = await api.request("GET", path, params={"resourceVersion": "0"})
    return [(item.get("status") or {}).get("reason") for item in answer["items"]]


async def _all_say(api: KubeClient, reason: str, count: int) -> None:
    while True:  # twenty times a second, from the watch cache
        if (await _reasons(api)).count(reason) == count:
            return
        await asyncio.sleep(0.05)


async def _pool_change(plane: ControlPlane, count: int) -> float:
    async with KubeClient.connect(plane.connection_info()) as api:
        await api.create(_pool_deployment())
        placed = [
            {**_session(i), "spec": {"userId": "u", "placement": {"pool": operators.WATCHED_POOL}}}
            for i in range(count)
        ]
        await asyncio.gather(*(api.create(body) for body in placed))
        await _all_say(api, "PoolUnavailable", count)
        selector = ",".join(f"{k}={v}" for k, v in POOL_LABELS.items())
        pods = f"/api/v1/namespaces/{operators.NAMESPACE}/pods"
        [pod] = (await api.request("GET", pods, params={"labelSelector": selector}))["items"]
        waiting = {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
        status = {"name": "gateway", "image": "registry.invalid/earshot:0", "imageID": "",
                  "ready": False, "restartCount": 0, "state": {"waiting": waiting}}  # fmt: skip
        start = time.perf_counter()
        await api.patch(
            f"{pods}/{pod['metadata']['name']}/status",
            {"status": {"phase": "Pending", "containerStatuses": [status]}},
        )
        await _all_say(api, "ImagePullBackOff", count)
        return time.perf_counter() - start


def measure_pool_change(count: int) -> float:
    """Seconds from a pool's pod reporting a pull failure until all ``count`` sessions say so."""
    os.environ["EARSHOT_OPERATOR_POOL_CHECK_INTERVAL_SECONDS"] = str(POOL_CHECK_INTERVAL_S)
    with running_control_plane() as plane:
        plane.kubectl("create", "namespace", NAMESPACE)
        kubeconfig = operator_kubeconfig(plane)
        with OperatorProcess(kubeconfig, log=plane.folder / "operator.log", drift_interval_s=600.0):
            return asyncio.run(_pool_change(plane, count))


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def render(result: Result) -> str:
    """The result as a Markdown table."""
    rows = [
        ("sessions applied at once", f"{result.sessions}"),
        ("apply time (all creates answered)", f"{result.apply_s:.2f} s"),
        ("time until all Provisioning", f"{result.provisioning_s:.2f} s"),
        ("operator RSS idle", f"{result.rss_idle_mib:.1f} MiB"),
        ("operator RSS after the burst", f"{result.rss_after_mib:.1f} MiB"),
        ("operator RSS peak (VmHWM)", f"{result.rss_peak_mib:.1f} MiB"),
        ("operator CPU for the burst", f"{result.cpu_s:.1f} s"),
        *(
            (f"{name} CPU for the burst", f"{seconds:.1f} s")
            for name, seconds in sorted(result.control_plane_cpu_s.items())
        ),
        ("reconcile duration p50 (bucket bound)", f"<= {result.reconcile_p50_s:g} s"),
        ("reconcile duration p95 (bucket bound)", f"<= {result.reconcile_p95_s:g} s"),
    ]
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines)


def _machine() -> str:
    kube = subprocess.run(
        ["bash", str(Path(__file__).parents[1] / "tests/e2e/controlplane/build.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (
        f"{platform.node()}, {os.cpu_count()} CPUs (shared), Python {sys.version.split()[0]}, "
        f"kube-apiserver v1.20.2 from {kube}, etcd on /dev/shm"
    )


def main() -> None:
    """Run the benchmark, print the table and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--pool-change", action="store_true", help="time a pool change instead")
    parser.add_argument("--repeats", type=int, default=3, help="pool-change runs (fresh planes)")
    args = parser.parse_args()
    if args.pool_change:
        runs = []
        for _ in range(args.repeats):
            load = _load()
            runs.append((measure_pool_change(args.sessions), load))
            print(f"{runs[-1][0]:.2f} s (load average before: {load})")
        _report_pool_change(args.sessions, runs)
        return
    result = measure(args.sessions)
    table = render(result)
    print(table)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        f"# Operator scale: {result.sessions} TranscriptionSessions at once\n\n"
        f"Measured {today} with `python -m bench.operator_scale --sessions {result.sessions}` on "
        f"{_machine()}.\n\n"
        "One operator process (kopf, least-privilege token, drift interval 60 s) against a local "
        "control plane; no kubelet, so sessions stop at Provisioning (every owned object exists). "
        "The apiserver, etcd, the controller-manager (which creates the ReplicaSets and Pods of the "
        "new Deployments), the client and the operator share the machine's CPUs.\n\n"
        f"{table}\n"
    )


def _report_pool_change(count: int, runs: list[tuple[float, str]]) -> None:
    seconds = sorted(s for s, _ in runs)
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [f"| {n} | {s:.2f} s | {load} |" for n, (s, load) in enumerate(runs, 1)]
    POOL_CHANGE_REPORT.write_text(
        f"# Operator: a pool change reaching {count} sessions\n\n"
        f"Measured {today} with `python -m bench.operator_scale --pool-change --sessions {count} "
        f"--repeats {len(runs)}` on {_machine()}.\n\n"
        "One operator process (pool check every 1 s, drift interval 600 s so no drift pass "
        "interferes) against a fresh local control plane per run; the pool's pod is pending (no "
        "kubelet), then its status reports an image it cannot pull, as a kubelet would. Measured "
        "from that status write until every session's status says ImagePullBackOff: up to one pool "
        "check interval, then the re-reconcile of the pool's sessions "
        "(`drifting.CONCURRENT_RECONCILES` at once). The control plane, the operator and the "
        "bench share the machine's CPUs with whatever else runs (the load average column).\n\n"
        "| run | all sessions say ImagePullBackOff after | load average before (1, 5, 15 min) |\n"
        "|---|---|---|\n" + "\n".join(rows) + f"\n\nMedian: {seconds[len(seconds) // 2]:.2f} s.\n"
    )


if __name__ == "__main__":
    main()
