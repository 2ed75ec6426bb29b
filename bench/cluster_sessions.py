"""Sessions on a real node: N TranscriptionSessions applied at once, apply -> Ready, pod RSS.

Starts the single-node cluster of tests/cluster (kubelet, containerd, kube-proxy, Service DNS in a
private network namespace), installs the chart with the images built here
(tests/cluster/release.py: operator, Redis, MariaDB and the Triton CPU pool, every pod Ready),
then for each N applies N sessions in one ``kubectl apply`` and reports, from real pods:

* apply -> Ready: from the apply until each session's status says Ready (the operator's Deployment
  is available: its pod passed its readiness probe on the real kubelet), p50/p99/max;
* time until all N are Ready;
* each gateway pod's RSS: ``total_rss`` of the pod's memory cgroup (v1), that is the resident
  anonymous memory of its gateway and persister containers together, after all are Ready;
  median and max, and the per-container medians.

The sessions are deleted (and their pods gone) before the next N.

Usage: ``python -m bench.cluster_sessions [--sessions 10 30]``.
Writes ``bench/reports/cluster_sessions.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.quantiles import percentiles_ms
from tests.cluster.harness import Cluster, running_cluster
from tests.cluster.release import SAMPLE_SESSION, Release, installed_release

REPORT = Path(__file__).parent / "reports" / "cluster_sessions.md"
READY_TIMEOUT_S = 900.0
_MEMORY = Path("/sys/fs/cgroup/memory")


def _session(index: int) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(SAMPLE_SESSION))
    body["metadata"]["name"] = f"bench-{index:03d}"
    body["spec"]["userId"] = f"user-{index:03d}"
    return body


def _statuses(release: Release) -> dict[str, str]:
    items = release.get("transcriptionsessions")["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}


def _total_rss_mib(cgroup: Path) -> float:
    for line in (cgroup / "memory.stat").read_text().splitlines():
        key, value = line.split()
        if key == "total_rss":
            return int(value) / 2**20
    raise RuntimeError(f"no total_rss in {cgroup}")


def _pod_memory(cluster: Cluster, pod: dict[str, Any]) -> dict[str, float]:
    """RSS of one pod's cgroup and of each container's, in MiB."""
    uid = pod["metadata"]["uid"]
    root = _MEMORY / cluster.netns / "kubepods"
    (pod_cgroup,) = list(root.glob(f"**/pod{uid}"))
    memory = {"pod": _total_rss_mib(pod_cgroup)}
    for status in pod["status"]["containerStatuses"]:
        container_id = status["containerID"].split("://", 1)[1]
        memory[status["name"]] = _total_rss_mib(pod_cgroup / container_id)
    return memory


def measure(release: Release, sessions: int) -> dict[str, Any]:
    """Apply ``sessions`` sessions at once; apply->Ready per session and pod RSS once all Ready."""
    bodies = [_session(i) for i in range(sessions)]
    listing = {"apiVersion": "v1", "kind": "List", "items": bodies}
    started = time.monotonic()
    release.kubectl("apply", "-f", "-", stdin=json.dumps(listing))
    ready_at: dict[str, float] = {}
    deadline = started + READY_TIMEOUT_S
    names = {b["metadata"]["name"] for b in bodies}
    while len(ready_at) < sessions:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(ready_at)} of {sessions} Ready in {READY_TIMEOUT_S} s")
        now = time.monotonic()
        for name, phase in _statuses(release).items():
            if name in names and phase == "Ready" and name not in ready_at:
                ready_at[name] = now - started
        time.sleep(0.25)
    pods = release.get("pods", "-l", "earshot.dev/kind=tsess")["items"]
    memories = [_pod_memory(release.cluster, pod) for pod in pods]
    release.kubectl("delete", "transcriptionsessions", "--all", "--wait=true", "--timeout=600s")
    while release.get("pods", "-l", "earshot.dev/kind=tsess")["items"]:
        time.sleep(1)
    durations = sorted(ready_at.values())
    containers = sorted({k for m in memories for k in m if k != "pod"})
    return {
        "sessions": sessions,
        "ready_ms": percentiles_ms(durations, (50, 99, 100)),
        "all_ready_s": durations[-1],
        "pods": len(memories),
        "pod_rss_median": statistics.median(m["pod"] for m in memories),
        "pod_rss_max": max(m["pod"] for m in memories),
        "container_rss_median": {
            c: statistics.median(m[c] for m in memories if c in m) for c in containers
        },
    }


def _report(results: list[dict[str, Any]], command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Cluster sessions: N TranscriptionSessions on a real node",
        "",
        f"Measured {when} with `{command}` on {platform.node()}, {os.cpu_count()} CPUs (shared "
        f"with other work), Python {platform.python_version()}, Kubernetes v1.20.2 (kubelet, "
        "containerd 1.6, runc) from tests/cluster/harness.py, the chart installed from the "
        "images built here with tests/cluster/values.yaml (gateway requests 10m CPU).",
        "",
        "All N sessions are applied in one `kubectl apply`. apply -> Ready is measured per "
        "session from the apply until its status phase is Ready (its gateway pod passed its "
        "readiness probe on the real kubelet), polled every 0.25 s. Pod RSS is `total_rss` of "
        "the pod's memory cgroup once all N are Ready (gateway and persister containers together), "
        "before any audio is streamed.",
        "",
        "| sessions | apply->Ready p50 | p99 | max | all Ready after | gateway pod RSS median "
        "| max | per container (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p50, p99, top = r["ready_ms"]
        per = ", ".join(f"{c} {v:.1f} MiB" for c, v in r["container_rss_median"].items())
        lines.append(
            f"| {r['sessions']} | {p50 / 1000:.1f} s | {p99 / 1000:.1f} s | {top / 1000:.1f} s "
            f"| {r['all_ready_s']:.1f} s | {r['pod_rss_median']:.1f} MiB "
            f"| {r['pod_rss_max']:.1f} MiB | {per} |"
        )
    lines += [
        "",
        "The node's 2 CPUs are shared by the control plane, the operator, Triton, Redis, "
        "MariaDB and every gateway pod, and by whatever else runs on the machine: these are "
        "figures for one busy shared 2-core machine, not for a dedicated node.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run the benchmark for each ``--sessions`` count and write the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_sessions")
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 30])
    args = parser.parse_args(argv)
    command = "python -m bench.cluster_sessions --sessions " + " ".join(map(str, args.sessions))
    results = []
    with running_cluster() as cluster, installed_release(cluster) as release:
        for count in args.sessions:
            result = measure(release, count)
            print(json.dumps(result), flush=True)
            results.append(result)
    REPORT.write_text(_report(results, command))
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
