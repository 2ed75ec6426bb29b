"""A session on a gateway pool that cannot serve it says so, on the real single-node cluster; and
helm's ``--timeout`` caps the uninstall hook's wait.

The release runs one pool, ``spare``, with one gateway pod a real kubelet made Ready. The test then
breaks that pool the ways a pool breaks (scaled to zero, no node fits its pods, its image cannot be
pulled, its Deployment is gone) by changing its Deployment as an SRE's upgrade or mistake would,
and reads what ``kubectl`` says of a session placed on it: not Ready, REASON the pods' own cause, a
Warning event naming the pool, within seconds; and Ready again, with a Normal event, once the pool
has a Ready gateway. The tests share the release and run in file order; the last one
uninstalls it. docs/pools.md ("A pool that cannot serve") and docs/operations.md ("Uninstall").
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.chart.charts import helm_binary
from tests.cluster.harness import Cluster
from tests.cluster.release import RELEASE, Release, installed_release
from tests.cluster.test_sre_path import _session, _wait_phase

T = TypeVar("T")
POOL = "spare"
DEPLOYMENT = f"{RELEASE}-pool-{POOL}"
ON_POOL = {"placement": {"pool": POOL}}
#: "Within seconds": the operator reads a pool every 5 s; a loaded 2-core node adds some.
WITHIN_S = 40.0
#: A gateway pod's start on that node (pull from the node's store, process start, readiness).
POD_START_S = 180.0
#: Long enough that helm's default --timeout (5m) would not cover the hook: the notes say so.
UNINSTALL_WAIT_S = 300
SMALL = {"requests": {"cpu": "10m", "memory": "32Mi"}}
VALUES: dict[str, Any] = {
    "pools": {
        "defaultPlacement": "dedicated",
        "gateways": {
            "default": {"enabled": False},
            POOL: {
                "enabled": True,
                "engine": "paraformer",
                "replicas": 1,
                "maxConnections": 5,
                "port": 8000,
                "persisterPort": 8001,
                "serviceType": "ClusterIP",
                "terminationGracePeriodSeconds": 30,
                "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                "persisterResources": SMALL,
                "podAnnotations": {},
                "nodeSelector": {},
                "tolerations": [],
                "affinity": {},
                "priorityClassName": "",
                "autoscaling": {"enabled": False},
            },
        },
    },
    "uninstall": {"timeoutSeconds": UNINSTALL_WAIT_S},
}


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart with the ``spare`` pool, every pod Ready, in a namespace of its own."""
    with installed_release(cluster, namespace="earshot-poolwarn", values=VALUES) as installed:
        yield installed
        if RELEASE in installed.helm("list", "--short", "--all"):  # the last test uninstalls it
            _release_held(installed)
            installed.helm("uninstall", RELEASE, "--wait", "--timeout", "360s")


def _release_held(release: Release) -> None:
    """Let the session the last test holds with a foreign finalizer go (if it is there)."""
    if "held" not in {s["metadata"]["name"] for s in release.get("tsess")["items"]}:
        return
    release.kubectl(
        "patch", "tsess", "held", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )


def _until(what: str, probe: Callable[[], T | None], timeout_s: float = WITHIN_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.5)


def _status(release: Release, name: str) -> dict[str, Any]:
    status: dict[str, Any] = release.get("transcriptionsession", name).get("status") or {}
    return status


def _reason_becomes(
    release: Release, name: str, *reasons: str, timeout_s: float = WITHIN_S
) -> dict[str, Any]:
    started = time.monotonic()
    seen: list[str] = []

    def probe() -> dict[str, Any] | None:
        status = _status(release, name)
        if not seen or seen[-1] != status.get("reason"):
            seen.append(str(status.get("reason")))
        return status if status.get("reason") in reasons else None

    try:
        status = _until(f"{name} reason in {reasons}", probe, timeout_s)
    except AssertionError as error:
        pods = release.kubectl("get", "pods", "-o", "wide")
        raise AssertionError(f"{error}; reasons seen {seen}; pods:\n{pods}") from None
    print(f"{name}: {status['reason']} after {time.monotonic() - started:.1f} s (seen {seen})")
    return status


def _events(release: Release, name: str, kind: str) -> list[dict[str, Any]]:
    found = release.get("events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in found if e["type"] == kind]


def _event(release: Release, name: str, kind: str, reason: str) -> dict[str, Any]:
    return _until(
        f"a {kind} event {reason} on {name}",
        lambda: next((e for e in _events(release, name, kind) if e["reason"] == reason), None),
    )


def _row(release: Release, name: str) -> list[str]:
    """PHASE, READY and REASON of ``kubectl get tsess``, as an SRE reads them."""
    return release.kubectl("get", "tsess", name, "--no-headers").split()[1:4]


def _patch(release: Release, patch: dict[str, Any]) -> None:
    release.kubectl("patch", "deployment", DEPLOYMENT, "--type=strategic", "-p", json.dumps(patch))


def _pod_spec(**spec: Any) -> dict[str, Any]:
    return {"spec": {"template": {"spec": spec}}}


def test_a_session_on_a_pool_that_cannot_run_is_not_ready_and_says_why(release: Release) -> None:
    release.kubectl("apply", "-f", "-", stdin=_session("onspare", **ON_POOL))
    ready = _wait_phase(release, "onspare", "Ready")
    assert ready["reason"] == "Registered"
    containers = release.get("deployment", DEPLOYMENT)["spec"]["template"]["spec"]["containers"]
    [gateway] = [c for c in containers if c["name"] == "gateway"]

    # no gateway at all: scaled to zero (a rolling update keeps a Ready pod while a new one
    # fails, and the pool then serves: each break below starts from zero)
    release.kubectl("scale", "deployment", DEPLOYMENT, "--replicas=0")
    status = _reason_becomes(release, "onspare", "PoolUnavailable")
    assert status["message"] == f"gateway pool {POOL} has no Ready gateway (0 of 0)"
    assert status["registration"]["pool"] == POOL  # still registered: admitted once it is up
    assert _row(release, "onspare") == ["Provisioning", "False", "PoolUnavailable"]
    _event(release, "onspare", "Warning", "PoolUnavailable")

    # no node fits: the pool asks for a node label the cluster lacks
    _patch(release, _pod_spec(nodeSelector={"earshot.dev/nowhere": "true"}))
    release.kubectl("scale", "deployment", DEPLOYMENT, "--replicas=1")
    status = _reason_becomes(release, "onspare", "Unschedulable")
    assert status["message"].startswith(f"gateway pool {POOL} has no Ready gateway (0 of 1): pod ")
    assert "0/1 nodes are available" in status["message"], status["message"]  # the scheduler
    assert _row(release, "onspare") == ["Provisioning", "False", "Unschedulable"]
    warning = _event(release, "onspare", "Warning", "Unschedulable")
    assert warning["message"] == status["message"]

    # a node fits, but the image cannot be pulled (a registry nobody answers at)
    missing = "127.0.0.1:9/earshot/none:0"
    _patch(
        release,
        _pod_spec(
            nodeSelector=None,
            containers=[{"name": "gateway", "image": missing, "imagePullPolicy": "IfNotPresent"}],
        ),
    )
    status = _reason_becomes(release, "onspare", "ErrImagePull", "ImagePullBackOff")
    assert f"gateway pool {POOL} has no Ready gateway" in status["message"]
    assert missing in status["message"], status["message"]
    assert _row(release, "onspare")[:2] == ["Provisioning", "False"]
    _event(release, "onspare", "Warning", status["reason"])

    # the image is put back: a gateway is Ready, the session Ready again, with a Normal event
    # (one more than it had: the first came when the session was created)
    before = _ready_events(release, "onspare")
    pulled = {k: gateway[k] for k in ("name", "image", "imagePullPolicy")}
    _patch(release, _pod_spec(containers=[pulled]))
    status = _reason_becomes(release, "onspare", "Registered", timeout_s=POD_START_S)
    assert status["phase"] == "Ready"
    assert _row(release, "onspare") == ["Ready", "True", "Registered"]
    _until(
        "a new Ready event", lambda: True if _ready_events(release, "onspare") > before else None
    )


def _ready_events(release: Release, name: str) -> int:
    """How many times the session was told Ready (an event repeated counts its repeats)."""
    ready = [e for e in _events(release, name, "Normal") if e["reason"] == "Ready"]
    return sum(int(e.get("count") or 1) for e in ready)


def test_a_session_on_a_pool_whose_deployment_is_gone_says_so(release: Release) -> None:
    release.kubectl("apply", "-f", "-", stdin=_session("onspare-2", **ON_POOL))
    _until("onspare-2 registered", lambda: _status(release, "onspare-2").get("registration"))
    release.kubectl("delete", "deployment", DEPLOYMENT)
    status = _reason_becomes(release, "onspare-2", "PoolMissing")
    namespace = release.namespace
    assert status["message"] == (
        f"gateway pool {POOL}: Deployment {namespace}/{DEPLOYMENT} not found"
    )
    _event(release, "onspare-2", "Warning", "PoolMissing")
    assert _row(release, "onspare-2") == ["Provisioning", "False", "PoolMissing"]


def _uninstall(release: Release, *args: str) -> subprocess.CompletedProcess[str]:
    """``helm uninstall``, failing or not (Release.helm asserts success)."""
    argv = [helm_binary(), "uninstall", RELEASE, *args]
    argv += ["--kubeconfig", str(release.cluster.kubeconfig), "--namespace", release.namespace]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)


def test_helms_timeout_caps_the_uninstall_hooks_wait(release: Release) -> None:
    # the notes tell the --timeout this release's hook needs (300 s wait + 60 s)
    notes = release.helm("get", "notes", RELEASE)
    assert f"helm uninstall {RELEASE} -n {release.namespace} --timeout 360s" in notes, notes

    held = json.loads(_session("held"))
    held["metadata"]["finalizers"] = ["example.com/keep"]  # another controller's
    release.kubectl("apply", "-f", "-", stdin=json.dumps(held))

    started = time.monotonic()
    gave_up = _uninstall(release, "--timeout", "20s")
    took = time.monotonic() - started
    print(f"helm uninstall --timeout 20s: exit {gave_up.returncode} after {took:.1f} s")
    assert gave_up.returncode != 0
    assert "timed out waiting for the condition" in gave_up.stderr, gave_up.stderr
    assert took < 90.0, took  # helm's --timeout, not the hook's 300 s
    job = release.get("job", f"{RELEASE}-uninstall")
    assert job["status"].get("active") == 1, job["status"]  # the hook waits on, unread
    status = json.loads(release.helm("status", RELEASE, "--output", "json"))
    assert status["info"]["status"] == "uninstalling"
    assert release.get("deployment", f"{RELEASE}-operator")  # nothing of the release removed

    _release_held(release)
    done = _uninstall(release, "--wait", "--timeout", "360s")
    assert done.returncode == 0, done.stderr
    assert release.get("tsess")["items"] == []
    assert RELEASE not in release.helm("list", "--short", "--all")
