"""Sessions on a real node: N TranscriptionSessions applied at once, apply -> Ready, pod RSS.

Starts the single-node cluster of tests/cluster (kubelet, containerd, kube-proxy, Service DNS in a
private network namespace), installs the chart with the images built here
(tests/cluster/release.py: operator, Redis, MariaDB and the Triton CPU pool, every pod Ready),
then for each N applies N sessions in one ``kubectl apply`` and reports, from real pods:

* apply -> Ready: from the apply until each session's status says Ready (the operator's Deployment
  is available: its pod passed its readiness probe on the real kubelet), p50/p99/max, and the
  median gap between two polls (the resolution of those figures);
* time until all N are Ready;
* each gateway pod's RSS: ``total_rss`` of the pod's memory cgroup (v1), that is the resident
  anonymous memory of its gateway and persister containers together, and of each container's,
  after all are Ready: every pod's, with the median and max;
* the machine's load average before the apply and after the RSS is read.

The sessions are deleted (and their pods gone) before the next N.

Usage: ``python -m bench.cluster_sessions [--sessions 10 30]``.
Writes ``bench/reports/cluster_sessions.md``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import procstats
from bench.quantiles import percentiles_ms
from tests.cluster.harness import Cluster, running_cluster
from tests.cluster.release import REPO, SAMPLE_SESSION, VALUES, Release, installed_release

REPORT = Path(__file__).parent / "reports" / "cluster_sessions.md"
READY_TIMEOUT_S = 900.0
POLL_S = 0.25
MEMORY_READS = 5
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
    """RSS of one pod's cgroup and of each of its running containers', in MiB."""
    uid = pod["metadata"]["uid"]
    root = _MEMORY / cluster.netns / "kubepods"
    (pod_cgroup,) = list(root.glob(f"**/pod{uid}"))
    memory = {"pod": _total_rss_mib(pod_cgroup)}
    for status in pod["status"]["containerStatuses"]:
        if "running" in (status.get("state") or {}):
            container_id = status["containerID"].split("://", 1)[1]
            memory[status["name"]] = _total_rss_mib(pod_cgroup / container_id)
    return memory


def _started(pod: dict[str, Any]) -> bool:
    """Whether the kubelet has made the pod's cgroup and started a container in it."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any("running" in (s.get("state") or {}) for s in statuses)


def measure(release: Release, sessions: int) -> dict[str, Any]:
    """Apply ``sessions`` sessions at once; apply->Ready per session and pod RSS once all Ready."""
    bodies = [_session(i) for i in range(sessions)]
    listing = {"apiVersion": "v1", "kind": "List", "items": bodies}
    load_before = procstats.loadavg()
    started = time.monotonic()
    release.kubectl("apply", "-f", "-", stdin=json.dumps(listing))
    ready_at, polls = _wait_ready(release, {b["metadata"]["name"] for b in bodies}, started)
    not_ready = _not_ready(release, set(ready_at))
    memories, restarts = _memories(release)
    probes, endings = _restart_causes(release)
    load_after = procstats.loadavg()
    release.kubectl("delete", "transcriptionsessions", "--all", "--wait=true", "--timeout=600s")
    while release.get("pods", "-l", "earshot.dev/kind=tsess")["items"]:
        time.sleep(1)
    durations = sorted(ready_at.values())
    containers = sorted({k for m in memories.values() for k in m if k != "pod"})
    return {
        "sessions": sessions,
        "load_before": load_before,
        "load_after": load_after,
        "ready": len(durations),
        "ready_ms": percentiles_ms(durations, (50, 99, 100)) if durations else None,
        "all_ready_s": durations[-1] if not not_ready else None,
        "not_ready": not_ready,
        "poll_gap_median_s": statistics.median(b - a for a, b in itertools.pairwise(polls)),
        "pods": len(memories),
        "pod_rss_median": statistics.median(m["pod"] for m in memories.values()),
        "pod_rss_max": max(m["pod"] for m in memories.values()),
        "container_rss_median": {
            c: statistics.median(m[c] for m in memories.values() if c in m) for c in containers
        },
        "each_pod_rss": dict(sorted(memories.items())),
        "restarts": dict(sorted(restarts.items())),
        "probe_failures": probes,
        "container_endings": endings,
    }


def _memories(release: Release) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Each started gateway pod's RSS (:func:`_pod_memory`) and its containers' restarts so far.

    A container the kubelet restarts between the listing and the read has left its cgroup: the
    pods are listed and read again (the restart is counted in the next listing).
    """
    for _ in range(MEMORY_READS):
        pods = [
            p for p in release.get("pods", "-l", "earshot.dev/kind=tsess")["items"] if _started(p)
        ]
        try:
            memories = {p["metadata"]["name"]: _pod_memory(release.cluster, p) for p in pods}
        except FileNotFoundError:
            continue
        restarts = {
            p["metadata"]["name"]: sum(s["restartCount"] for s in p["status"]["containerStatuses"])
            for p in pods
        }
        return memories, restarts
    raise RuntimeError(f"the gateway pods' containers kept changing over {MEMORY_READS} reads")


def _restart_causes(release: Release) -> tuple[dict[str, int], dict[str, int]]:
    """What the kubelet said about the session pods: failed probes, and how containers last ended.

    Probe failures are the ``Unhealthy`` events of the pods, by probe and container ("Liveness
    gateway": the kubelet restarts a container after ``failureThreshold`` of them in a row); the
    endings are each container's last termination (reason and exit code) before its restart.
    """
    pods = release.get("pods", "-l", "earshot.dev/kind=tsess")["items"]
    names = {p["metadata"]["name"] for p in pods}
    probes: collections.Counter[str] = collections.Counter()
    for event in release.get("events")["items"]:
        involved = event.get("involvedObject") or {}
        if event.get("reason") == "Unhealthy" and involved.get("name") in names:
            probe = str(event.get("message", "")).split(" ", 1)[0]
            container = str(involved.get("fieldPath", "")).removeprefix("spec.containers{")
            probes[f"{probe} {container.rstrip('}')}"] += int(event.get("count") or 1)
    endings: collections.Counter[str] = collections.Counter()
    for pod in pods:
        for status in pod["status"].get("containerStatuses") or []:
            ended = (status.get("lastState") or {}).get("terminated")
            if ended:
                endings[f"{status['name']} {ended.get('reason')} ({ended.get('exitCode')})"] += 1
    return dict(sorted(probes.items())), dict(sorted(endings.items()))


def _wait_ready(
    release: Release, names: set[str], started: float
) -> tuple[dict[str, float], list[float]]:
    """Seconds from ``started`` to the poll that first saw each session Ready, and every poll's end.

    A poll's time is taken when its ``kubectl get`` has returned, so a session became Ready at
    most that long after the apply and later than the poll before. Polling stops after
    ``READY_TIMEOUT_S``: the sessions not Ready by then are missing from the result.
    """
    ready_at: dict[str, float] = {}
    polls = [started]
    while len(ready_at) < len(names) and time.monotonic() - started <= READY_TIMEOUT_S:
        phases = _statuses(release)
        polls.append(time.monotonic())
        for name, phase in phases.items():
            if name in names and phase == "Ready" and name not in ready_at:
                ready_at[name] = polls[-1] - started
        time.sleep(POLL_S)
    return ready_at, polls


def _not_ready(release: Release, ready: set[str]) -> dict[str, str]:
    """Each session not Ready: its phase and what its pod's containers wait for."""
    waiting: dict[str, list[str]] = {}
    for pod in release.get("pods", "-l", "earshot.dev/kind=tsess")["items"]:
        # The operator names a session's gateway ``tsess-<session>`` (bench names need no hash).
        instance = (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/instance", "")
        session = instance.removeprefix("tsess-")
        states = [
            f"{s['name']} {next(iter(s.get('state') or {'unknown': {}}))}"
            + (f" ({reason})" if (reason := _waiting_reason(s)) else "")
            for s in (pod.get("status") or {}).get("containerStatuses") or []
        ]
        phase = (pod.get("status") or {}).get("phase", "?")
        waiting.setdefault(session, []).append(f"pod {phase}: " + (", ".join(states) or "-"))
    return {
        name: f"{phase or 'no phase'}; " + ("; ".join(waiting.get(name, [])) or "no pod")
        for name, phase in sorted(_statuses(release).items())
        if name.startswith("bench-") and name not in ready
    }


def _waiting_reason(status: dict[str, Any]) -> str:
    return str(((status.get("state") or {}).get("waiting") or {}).get("reason", ""))


def _setup() -> str:
    """The requests of tests/cluster/values.yaml that share the node with the sessions."""
    values = yaml.safe_load(VALUES.read_text())
    operator = values["operator"]
    pool = values["pools"]["gateways"]["default"]
    return (
        f"operator {operator['resources']['requests']['cpu']} CPU; each session's gateway pod: "
        f"gateway {operator['gateway']['resources']['cpuRequest']}, persister "
        f"{operator['gateway']['persisterResources']['cpuRequest']}; the default pool's "
        f"{pool['replicas']} gateway pods also run; Triton "
        f"{values['triton']['cpu']['resources']['requests']['cpu']}"
    )


def _report(results: list[dict[str, Any]], command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Cluster sessions: N TranscriptionSessions on a real node",
        "",
        f"Measured {when} at commit {_commit()} with `{command}` on {platform.node()}, "
        f"{os.cpu_count()} CPUs (shared with other work), Python {platform.python_version()}, "
        "Kubernetes v1.20.2 (kubelet, containerd 1.6, runc) from tests/cluster/harness.py, the "
        "chart installed from the images built here with tests/cluster/values.yaml (CPU "
        f"requests: {_setup()}).",
        "",
        "How each figure was obtained:",
        "",
        "* all N sessions are applied in one `kubectl apply`; **apply -> Ready** is, per session, "
        "the time from just before that apply to the end of the first `kubectl get "
        "transcriptionsessions` that shows its status phase Ready (the operator's Deployment is "
        "available: its pod passed its readiness probe on the real kubelet). The gets run one "
        f"after another with {POLL_S} s between them; a get takes longer under load, so the "
        "median gap between the ends of two gets is given: a session became Ready at most that "
        "much earlier than measured. p99 of 10 samples is their maximum;",
        "* **all Ready after**: the largest apply -> Ready of the N; polling stops "
        f"{READY_TIMEOUT_S:.0f} s after the apply, and a row whose sessions were not all Ready by "
        "then gives how many were, with p50/p99/max over those (each session that was not, and "
        "what its pod's containers were doing, is listed below the summary);",
        "* **load**: the 1, 5 and 15 minute load averages of the machine (`/proc/loadavg`) just "
        "before the apply and once all N pods' memory was read;",
        "* **pod RSS**: `total_rss` of `memory.stat` in each gateway pod's memory cgroup (v1; "
        "the resident anonymous memory of its gateway and persister containers together), and "
        "of each running container's own cgroup, read from the node once all N are Ready (or "
        "polling stopped; then of the pods with a running container), before any "
        "audio is streamed. Every pod's figures are listed below the summary, with the restarts of "
        "its containers by then (a liveness probe that failed under load, a startup probe that failed "
        "60 times in a row, or a crash).",
        "",
        "The sessions and their pods are gone before the next N is applied.",
        "",
        "| sessions | apply->Ready p50 | p99 | max | all Ready after | median poll gap "
        "| load before | load after | gateway pod RSS median | max | per container (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per = ", ".join(f"{c} {v:.1f} MiB" for c, v in r["container_rss_median"].items())
        if r["ready_ms"] is None:
            ready = "- | - | -"
        else:
            ready = " | ".join(f"{ms / 1000:.1f} s" for ms in r["ready_ms"])
        if r["all_ready_s"] is None:
            everyone = f"**not all: {r['ready']} of {r['sessions']} in {READY_TIMEOUT_S:.0f} s**"
        else:
            everyone = f"{r['all_ready_s']:.1f} s"
        lines.append(
            f"| {r['sessions']} | {ready} | {everyone} | {r['poll_gap_median_s']:.2f} s "
            f"| {r['load_before']} | {r['load_after']} | {r['pod_rss_median']:.1f} MiB "
            f"| {r['pod_rss_max']:.1f} MiB | {per} |"
        )
    lines += [
        "",
        "What the kubelet said about the session pods by then: failed probes (`Unhealthy` events, "
        "summed over their counts, by probe and container) and each container's last ending "
        "before a restart (reason and exit code; one per container that restarted):",
        "",
        "| sessions | failed probes | last endings before a restart |",
        "|---|---|---|",
        *[
            f"| {r['sessions']} | "
            + (", ".join(f"{k}: {v}" for k, v in r["probe_failures"].items()) or "none")
            + " | "
            + (", ".join(f"{k}: {v}" for k, v in r["container_endings"].items()) or "none")
            + " |"
            for r in results
        ],
    ]
    lines += [
        "",
        "The node's 2 CPUs are shared by the control plane, the operator, Triton, Redis, "
        "MariaDB and every gateway pod, and by whatever else runs on the machine (the load "
        "columns): these are figures for one busy shared 2-core machine, not for a dedicated node.",
    ]
    for r in results:
        if r["not_ready"]:
            lines += [
                "",
                f"## Not Ready after {READY_TIMEOUT_S:.0f} s, {r['sessions']} sessions",
                "",
                "| session | phase; its pod and containers |",
                "|---|---|",
            ]
            lines += [f"| {name} | {state} |" for name, state in r["not_ready"].items()]
        containers = sorted(r["container_rss_median"])
        lines += [
            "",
            f"## Each gateway pod's RSS, {r['sessions']} sessions (MiB)",
            "",
            "| pod | pod cgroup | " + " | ".join(containers) + " | container restarts |",
            "|---|---|" + "---|" * len(containers) + "---|",
        ]
        for name, memory in r["each_pod_rss"].items():
            cells = " | ".join(f"{memory[c]:.1f}" if c in memory else "-" for c in containers)
            lines.append(f"| {name} | {memory['pod']:.1f} | {cells} | {r['restarts'][name]} |")
    lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


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
