"""earshot as an SRE runs it: ``helm install``, ``kubectl apply`` of a session, a caller streaming.

Everything runs on the real single-node cluster (tests/cluster/harness.py) from images built here:
the chart's operator, evaluation Redis and MariaDB and the Triton CPU pool (tiny Paraformer through
the chart's model provisioning) are pods a real kubelet made Ready; sessions get gateway pods from
the operator running in the cluster with the chart's RBAC. The client runs in the node's network
namespace and finds the gateway through the cluster's DNS, as a caller's system would.

Talk on the cluster (the ExApp pod, a room's gateway pod in an HPB call):
tests/cluster/test_talk_path.py.
The tests share one release and run in file order; the last one uninstalls it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.charts import CHART
from tests.cluster import hardening
from tests.cluster.harness import Cluster
from tests.cluster.release import (
    MODELS_CLAIM,
    RELEASE,
    Release,
    client_argv,
    installed_release,
    run_client,
    wait_all_ready,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "docs" / "samples" / "transcriptionsession.yaml"
COMPONENTS = {"operator", "triton-cpu", "redis", "mysql"}
PHASE_TIMEOUT_S = 180.0
#: What helm uninstall could leave in the namespace: every kind the chart or the operator makes.
NAMESPACED_KINDS = (
    "all", "secrets", "configmaps", "serviceaccounts", "roles", "rolebindings",
    "persistentvolumeclaims", "networkpolicies", "poddisruptionbudgets", "ingresses",
    "transcriptionsessions", "talkrooms",
)  # fmt: skip


#: Container restarts once the install was Ready (one CI run saw a pool gateway exit 1 nine seconds
#: after its start, while the stores were being created). The tests allow those, and none after.
_AT_INSTALL: dict[tuple[str, str], int] = {}


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart installed with the local images; every pod Ready."""
    with installed_release(cluster) as installed:
        _AT_INSTALL.update(hardening.restarts(installed))
        yield installed


def _session(name: str, **spec: Any) -> str:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return json.dumps(body)


def _wait_phase(release: Release, name: str, phase: str) -> dict[str, Any]:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = release.get("transcriptionsession", name).get("status") or {}
        if status.get("phase") == phase:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{name} not {phase} in {PHASE_TIMEOUT_S} s: {status}")


def _apply_ready(release: Release, name: str, **spec: Any) -> tuple[str, str]:
    """Apply a session and wait for Ready; its endpoint and access token."""
    release.kubectl("apply", "-f", "-", stdin=_session(name, **spec))
    status = _wait_phase(release, name, "Ready")
    token = release.secret_value(status["tokenSecret"], "token")
    return status["endpoint"], token


def _closes(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "closed"]


def _serving_pod(release: Release, session: str) -> str:
    """The name of the session's one gateway pod that is not going away, once it is Ready."""
    selector = f"app.kubernetes.io/instance=tsess-{session}"
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pods = release.get("pods", "-l", selector)["items"]
        if len(pods) == 1 and not pods[0]["metadata"].get("deletionTimestamp"):
            ready = {c["type"]: c["status"] for c in pods[0]["status"].get("conditions") or ()}
            if ready.get("Ready") == "True":
                return str(pods[0]["metadata"]["name"])
        time.sleep(0.5)
    raise AssertionError(f"tsess-{session} has no single Ready pod: {pods}")


def _streams_opened(release: Release, pod: str) -> float:
    """``earshot_streams_opened_total`` of a gateway pod, from its own /metrics."""
    probe = (
        "import urllib.request;"
        "print(sum(float(l.split()[-1]) for l in urllib.request.urlopen("
        "'http://127.0.0.1:8000/metrics').read().decode().splitlines()"
        " if l.startswith('earshot_streams_opened_total{')))"
    )
    return float(release.exec(pod, "gateway", "python", "-c", probe))


def test_every_pod_of_the_helm_install_is_ready_from_its_kubelet(release: Release) -> None:
    pods = release.get("pods")["items"]
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
    assert components >= COMPONENTS
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True", (pod["metadata"]["name"], pod["status"])
        assert pod["spec"]["nodeName"] == "earshot-node"


def test_pods_run_as_non_root_with_read_only_root_filesystems_and_pass_probes(
    release: Release,
) -> None:
    # the chart's pods and a session's gateway pod, the one the operator makes
    _apply_ready(release, "demo")
    pods = release.get("pods")["items"]
    instances = {p["metadata"]["labels"].get("app.kubernetes.io/instance") for p in pods}
    assert "tsess-demo" in instances, instances
    for pod in pods:
        hardening.assert_hardened(release, pod, before=_AT_INSTALL)


def test_a_sample_session_streams_partials_and_finals_that_are_stored_in_cluster(
    release: Release,
) -> None:
    endpoint, token = _apply_ready(release, "demo")
    assert endpoint.startswith(f"ws://tsess-demo.{release.namespace}.svc:")
    redis = release.pod_of("redis")
    argv = client_argv(endpoint, f"--token={token}", "--speed", "1")
    client = subprocess.Popen(release.cluster.exec_inside(argv), stdout=subprocess.PIPE, text=True)
    # a final drops the partial hash it replaces: look for it while a segment is being spoken
    seen: dict[str, str] = {}
    try:
        while client.poll() is None and not seen:
            fields = release.exec(redis, "redis", "redis-cli", "HGETALL", "asr:sess:demo:current")
            pairs = fields.strip().splitlines()  # field, value, field, value ...
            seen = dict(zip(pairs[0::2], pairs[1::2], strict=True)) if len(pairs) >= 2 else {}
        out, _ = client.communicate(timeout=120)
    finally:
        client.kill()
        client.wait()
    messages = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    partials = [m for m in messages if m["type"] == "partial"]
    finals = [m for m in messages if m["type"] == "final"]
    assert partials, messages
    assert finals, messages
    assert [f["seq"] for f in finals] == list(range(1, len(finals) + 1))
    rows = release.mysql(
        "SELECT segment_seq, content FROM segments WHERE session_id = 'demo' ORDER BY segment_seq",
    )
    assert rows == [[str(f["seq"]), f["text"]] for f in finals]
    assert set(seen) == {"content", "seq", "ts"}, seen
    assert seen["content"] in {p["text"] for p in partials}
    counter = release.exec(redis, "redis", "redis-cli", "GET", "asr:sess:demo:seq").strip()
    assert counter == str(finals[-1]["seq"])


def test_the_stored_session_carries_the_user_id_of_its_resource(release: Release) -> None:
    endpoint, token = _apply_ready(release, "demo")
    run_client(release.cluster, endpoint, f"--token={token}", "--speed", "0")
    assert release.mysql("SELECT user_id FROM sessions WHERE id = 'demo'") == [["alice"]]


def test_a_client_without_the_token_or_with_another_sessions_token_is_refused(
    release: Release,
) -> None:
    endpoint, _ = _apply_ready(release, "demo")
    _, other_token = _apply_ready(release, "other")
    for args in ((), (f"--token={other_token}",)):
        messages = run_client(release.cluster, endpoint, *args, "--speed", "0")
        (closed,) = _closes(messages)
        assert closed["code"] == 1008, messages
        assert closed["reason"] == "unauthorized"
        (error,) = [m for m in messages if m["type"] == "error"]
        assert "needs its access token" in error["message"], error
        assert not [m for m in messages if m["type"] in ("partial", "final")]


def test_a_gateway_refuses_a_session_id_other_than_its_own(release: Release) -> None:
    endpoint, token = _apply_ready(release, "demo")
    foreign = endpoint.rsplit("/", 1)[0] + "/someone-else"
    messages = run_client(release.cluster, foreign, f"--token={token}", "--speed", "0")
    (closed,) = _closes(messages)
    assert closed["code"] == 1008, messages
    (error,) = [m for m in messages if m["type"] == "error"]
    assert "serves only session 'demo'" in error["message"], error
    assert not [m for m in messages if m["type"] in ("partial", "final")]


def test_a_session_with_auth_none_lets_a_legacy_client_in_without_a_token(
    release: Release,
) -> None:
    release.kubectl("apply", "-f", "-", stdin=_session("legacy", auth="none"))
    endpoint = _wait_phase(release, "legacy", "Ready")["endpoint"]
    messages = run_client(release.cluster, endpoint, "--speed", "0")
    assert [m for m in messages if m["type"] == "final"], messages
    assert [c["code"] for c in _closes(messages)] == [1000]


def test_deleting_the_gateway_pod_mid_stream_loses_and_repeats_no_final(release: Release) -> None:
    endpoint, token = _apply_ready(release, "moving")
    argv = client_argv(endpoint, f"--token={token}", "--repeat", "6", "--reconnect")
    client = subprocess.Popen(release.cluster.exec_inside(argv), stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    messages: list[dict[str, Any]] = []
    deleted = ""
    try:
        for line in client.stdout:
            message = json.loads(line)
            messages.append(message)
            if message["type"] == "final" and not deleted:
                pods = release.get("pods", "-l", "app.kubernetes.io/instance=tsess-moving")
                deleted = pods["items"][0]["metadata"]["name"]
                release.kubectl("delete", "pod", deleted, "--wait=false")
        client.wait(timeout=300)
    finally:
        client.kill()
        client.wait()
    assert deleted, messages
    closes = _closes(messages)
    assert len(closes) >= 2, messages  # the first connection dropped, another one finished
    # The stopping pod told the final of the segment being spoken, then asked for a reconnect.
    assert closes[0]["code"] == 1012, closes
    finals = [m for m in messages if m["type"] == "final"]
    seqs = [f["seq"] for f in finals]
    assert seqs == list(range(1, len(finals) + 1)), seqs  # no number skipped or repeated
    first_close = messages.index(closes[0])
    assert [m for m in messages[first_close:] if m["type"] == "final"], "no final after reconnect"
    # the reconnect went to the pod that replaced the deleted one (the only client of "moving")
    replacement = _serving_pod(release, "moving")
    assert replacement != deleted
    assert _streams_opened(release, replacement) >= 1
    query = (
        "SELECT segment_seq, content FROM segments WHERE session_id = 'moving' ORDER BY segment_seq"
    )
    deadline = time.monotonic() + 30.0  # the sidecar stores a final shortly after it is told
    while len(rows := release.mysql(query)) < len(finals) and time.monotonic() < deadline:
        time.sleep(0.5)
    # Every final the client was told is stored, once; nothing is stored that it was not told.
    assert rows == [[str(f["seq"]), f["text"]] for f in finals]


def test_an_inactive_session_completes_with_no_pods_and_a_deleted_one_leaves_nothing(
    release: Release,
) -> None:
    _apply_ready(release, "finished")
    release.kubectl("apply", "-f", "-", stdin=_session("finished", active=False))
    _wait_phase(release, "finished", "Completed")
    selector = "app.kubernetes.io/instance=tsess-finished"
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while release.get("pods", "-l", selector)["items"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not release.get("pods", "-l", selector)["items"]
    uid = release.get("transcriptionsession", "finished")["metadata"]["uid"]
    release.kubectl("delete", "transcriptionsession", "finished", "--timeout=120s", timeout_s=150)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    owned: list[str] = []
    while time.monotonic() < deadline:
        owned = [
            f"{item['kind']}/{item['metadata']['name']}"
            for kind in ("deployments", "services", "secrets", "configmaps", "pods")
            for item in release.get(kind)["items"]
            if any(ref["uid"] == uid for ref in item["metadata"].get("ownerReferences") or ())
        ]
        if not owned:
            break
        time.sleep(0.5)
    assert not owned


def test_helm_upgrade_with_a_changed_value_rolls_the_operator_pod(release: Release) -> None:
    before = release.pod_of("operator")
    values_args = [arg for path in release.values for arg in ("--values", str(path))]
    release.helm(
        "upgrade", RELEASE, str(CHART), *values_args, "--set", "operator.driftIntervalSeconds=45"
    )
    wait_all_ready(release)
    after = release.pod_of("operator")
    assert after != before
    env = release.get("pod", after)["spec"]["containers"][0].get("env") or []
    assert {"name": "EARSHOT_OPERATOR_DRIFT_INTERVAL_SECONDS", "value": "45"} in env


def test_no_pod_that_ran_the_tests_above_restarted_or_runs_as_root_or_writes_its_root(
    release: Release,
) -> None:
    # what is left of the tests above: the upgraded operator, the chart's other pods, the pool's
    # gateways and the sessions' gateway pods, the replacement of the deleted one among them
    pods = release.get("pods")["items"]
    instances = {p["metadata"]["labels"].get("app.kubernetes.io/instance") for p in pods}
    assert {"tsess-demo", "tsess-other", "tsess-legacy", "tsess-moving"} <= instances, instances
    for pod in pods:
        hardening.assert_hardened(release, pod, before=_AT_INSTALL)


def test_helm_uninstall_leaves_no_earshot_object_but_the_crds_and_the_kept_data(
    release: Release,
) -> None:
    # the sessions still there ("demo", "other", ...) are deleted by the chart's pre-delete hook
    # Job, run by the kubelet from the operator image, before the operator goes
    sessions = release.get("transcriptionsessions")["items"]
    assert sessions, "nothing left for the hook to delete"
    release.helm("uninstall", RELEASE, "--wait")
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    left: list[str] = []
    while time.monotonic() < deadline:
        listed = release.kubectl("get", ",".join(NAMESPACED_KINDS), "-o", "name").split()
        left = [
            name
            for name in listed
            if not name.endswith("/default")
            and not name.startswith("secret/default-token-")
            and name != "configmap/kube-root-ca.crt"
            # kept on purpose, with MariaDB's volume: a reinstall finds the password
            and name != f"secret/{RELEASE}-storage"
            # the claims: the test's own models claim and MariaDB's, checked below
            and not name.startswith("persistentvolumeclaim/")
        ]
        if not left:
            break
        time.sleep(1)
    assert not left
    cluster_wide = release.cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-o", "name"
    ).split()
    assert not [name for name in cluster_wide if RELEASE in name]
    crds = release.cluster.kubectl("get", "crd", "-o", "name").split()
    assert "customresourcedefinition.apiextensions.k8s.io/transcriptionsessions.earshot.dev" in crds
    kept = release.get("secret", f"{RELEASE}-storage")
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # MariaDB's claim stays, and the command docs/operations.md gives to drop it finds it
    claims = {c["metadata"]["name"] for c in release.get("persistentvolumeclaims")["items"]}
    assert claims == {MODELS_CLAIM, f"data-{RELEASE}-mysql-0"}, claims
    release.kubectl("delete", "pvc", "-l", "app.kubernetes.io/component=mysql")
    claims = {c["metadata"]["name"] for c in release.get("persistentvolumeclaims")["items"]}
    assert claims == {MODELS_CLAIM}, claims
    release.kubectl("delete", "secret", f"{RELEASE}-storage")  # leave the cluster as found
