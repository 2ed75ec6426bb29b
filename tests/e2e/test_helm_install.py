"""``helm install`` of charts/earshot into a real kube-apiserver 1.20, then a sample session.

The apiserver enforces Pod Security "restricted" with its PodSecurityPolicy admission plugin
(tests/e2e/controlplane/restricted-psp.yaml, the only policy): every pod the chart's workloads, the
operator's gateways and the uninstall hook make must be admitted by it.

This module runs its own control plane: it deletes the CRDs the shared fixture applies, so the
chart's copies are what get installed (helm skips CRDs that already exist). No kubelet runs, so the
operator runs as a local process with the installed Deployment's settings and the token of the
chart's own ServiceAccount and ClusterRole: a missing permission in the chart fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from earshot_operator.clients import KubeClient
from tests.chart.charts import CHART, helm
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import (
    REPO,
    ControlPlane,
    ControlPlaneError,
    running_control_plane,
    write_kubeconfig,
)
from tests.e2e.controlplane.operators import OperatorProcess

RELEASE = "earshot"
NAMESPACE = "earshot"
SAMPLE = REPO / "docs" / "samples" / "transcriptionsession.yaml"
#: Every optional part on, so capability-picked API versions (PDB, HPA) are exercised on 1.20.
VALUES = {
    "triton.gpu.enabled": "true",
    "talk.enabled": "true",
    "talk.nextcloudUrl": "https://cloud.example.com",
    "talk.hpbUrl": "wss://hpb.example.com/standalone-signaling/",
    "networkPolicy.enabled": "true",
    "triton.cpu.autoscaling.enabled": "true",
    "triton.cpu.podDisruptionBudget.enabled": "true",
    "triton.gpu.podDisruptionBudget.enabled": "true",
    # the sample session gets a gateway of its own, as on the SRE path (tests/cluster/values.yaml);
    # the default pool still runs, so its pods are admitted too
    "pools.defaultPlacement": "dedicated",
}


@dataclass(frozen=True)
class Installation:
    """The control plane, the release and what ``helm install`` printed."""

    plane: ControlPlane
    output: str

    def helm(self, *args: str) -> str:
        """helm against this control plane, in the release's namespace."""
        return helm(*args, "--kubeconfig", str(self.plane.kubeconfig), "--namespace", NAMESPACE)

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json`` in the release's namespace."""
        return json.loads(self.plane.kubectl("get", "-n", NAMESPACE, *args, "-o", "json"))


def _sets() -> list[str]:
    return [arg for key, value in VALUES.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def installed() -> Iterator[Installation]:
    """A fresh control plane without CRDs, and the chart installed into it."""
    with running_control_plane(pod_security_policy=True) as plane:
        plane.kubectl("delete", "crd", "--all", "--wait=true")
        output = helm(
            "install",
            RELEASE,
            str(CHART),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            *_sets(),
            timeout=300,
        )
        yield Installation(plane, output)


def test_helm_install_succeeds_and_tells_what_to_apply_next(installed: Installation) -> None:
    status = json.loads(installed.helm("status", RELEASE, "--output", "json"))
    assert status["info"]["status"] == "deployed"
    assert "kind: TranscriptionSession" in installed.output
    assert "kind: TalkRoom" in installed.output


def test_chart_installs_the_crds(installed: Installation) -> None:
    crds = json.loads(installed.plane.kubectl("get", "crd", "-o", "json"))["items"]
    names = {crd["metadata"]["name"] for crd in crds}
    assert names >= {"transcriptionsessions.earshot.dev", "talkrooms.earshot.dev"}
    for crd in crds:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]


def test_operator_and_triton_deployments_exist(installed: Installation) -> None:
    deployments = {d["metadata"]["name"]: d for d in installed.get("deployments")["items"]}
    assert {"earshot-operator", "earshot-triton-cpu", "earshot-triton-gpu", "earshot-talk"} <= set(
        deployments
    )
    operator = deployments["earshot-operator"]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"]["type"] == "Recreate"
    statefulsets = {s["metadata"]["name"] for s in installed.get("statefulsets")["items"]}
    assert statefulsets == {"earshot-redis", "earshot-mysql"}


def test_capabilities_pick_the_api_versions_kubernetes_1_20_serves(installed: Installation) -> None:
    manifest = installed.helm("get", "manifest", RELEASE)
    kinds = {(d["kind"], d["apiVersion"]) for d in yaml.safe_load_all(manifest) if d}
    assert ("PodDisruptionBudget", "policy/v1beta1") in kinds
    assert ("HorizontalPodAutoscaler", "autoscaling/v2beta2") in kinds
    assert installed.get("pdb", "earshot-triton-cpu")["spec"]["maxUnavailable"] == 1
    assert installed.get("hpa", "earshot-triton-cpu")["spec"]["maxReplicas"] == 4


def test_upgrade_keeps_the_generated_database_password(installed: Installation) -> None:
    before = installed.get("secret", "earshot-storage")["data"]["mysql-password"]
    installed.helm("upgrade", RELEASE, str(CHART), *_sets())
    after = installed.get("secret", "earshot-storage")["data"]["mysql-password"]
    assert base64.b64decode(after) == base64.b64decode(before)


def _service_account_token(installed: Installation, name: str, timeout_s: float = 60.0) -> str:
    # Kubernetes 1.20's token controller mints a Secret per service account
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        account = installed.get("serviceaccount", name)
        for ref in account.get("secrets") or ():
            data = installed.get("secret", ref["name"]).get("data") or {}
            if "token" in data:
                return base64.b64decode(data["token"]).decode()
        time.sleep(0.5)
    raise ControlPlaneError(f"no token for {NAMESPACE}/{name} in {timeout_s} s")


@pytest.fixture(scope="module")
def chart_operator(installed: Installation) -> Iterator[OperatorProcess]:
    """The operator as the chart's pod would run it: its env and its service account's token."""
    deployment = installed.get("deployment", "earshot-operator")
    pod = deployment["spec"]["template"]["spec"]
    token = _service_account_token(installed, pod["serviceAccountName"])
    kubeconfig = installed.plane.folder / "chart-operator.kubeconfig"
    write_kubeconfig(
        kubeconfig, server=installed.plane.server, ca=installed.plane.ca, user={"token": token}
    )
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    log = installed.plane.folder / "chart-operator.log"
    process = OperatorProcess(kubeconfig, log=log)
    # OperatorProcess passes its own environment on at start: set the chart's only for that
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        process.start()
    try:
        yield process
    finally:
        process.stop()
    forbidden = [line for line in log.read_text().splitlines() if "Forbidden" in line]
    assert not forbidden, f"the chart's RBAC refused the operator:\n{forbidden[0]}"


async def test_sample_session_gets_its_gateway_from_the_operator(
    installed: Installation, chart_operator: OperatorProcess
) -> None:
    installed.plane.kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLE))
    sample = yaml.safe_load(SAMPLE.read_text())
    body = {**sample, "metadata": {**sample["metadata"], "namespace": NAMESPACE}}
    name = f"tsess-{sample['metadata']['name']}"
    async with KubeClient.connect(installed.plane.connection_info()) as api:
        deployment = await helpers.eventually(
            lambda: api.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"),
            timeout_s=60,
            what=f"the gateway Deployment {name}",
        )
        pod = deployment["spec"]["template"]["spec"]
        assert {c["image"] for c in pod["containers"]} == {"ghcr.io/earshot-dev/earshot:0.1.0"}
        secret_refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for c in pod["containers"]
            for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert "earshot-storage" in secret_refs
        config = await api.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
        assert config is not None
        assert config["data"]["EARSHOT_TRITON_URL"] == "earshot-triton-cpu.earshot.svc:8001"

        async def ready() -> dict[str, Any] | None:
            await helpers.make_pods_ready(api, NAMESPACE, name)
            return await helpers.phase_is(api, body, "Ready")

        session = await helpers.eventually(ready, timeout_s=90, what="the session to be Ready")
    assert session["status"]["endpoint"].startswith(f"ws://{name}.{NAMESPACE}.svc:")


def test_chart_operator_ran_with_the_charts_settings(chart_operator: OperatorProcess) -> None:
    environment = Path(f"/proc/{chart_operator.pid}/environ").read_bytes().split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environment if b"=" in item}
    assert "EARSHOT_OPERATOR_REDIS_URL_SECRET" in names
    assert os.environ.get("EARSHOT_OPERATOR_REDIS_URL_SECRET") is None  # not left to other tests


#: What Pod Security "restricted" asks of a pod and its containers: the policy must find these as
#: the chart or the operator wrote them (PodSecurity admission, unlike a policy, fills nothing in).
RESTRICTED_POD_FIELDS = ("runAsNonRoot", "runAsUser", "seccompProfile")
RESTRICTED_CONTAINER_FIELDS = (
    "allowPrivilegeEscalation",
    "capabilities",
    "privileged",
    "runAsNonRoot",
    "runAsUser",
    "seccompProfile",
)
WORKLOADS = ("deployments", "statefulsets", "jobs")


def _restricted_fields(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    return {
        "pod": {
            k: v
            for k, v in (spec.get("securityContext") or {}).items()
            if k in RESTRICTED_POD_FIELDS
        },
        "containers": {
            c["name"]: {
                k: v
                for k, v in (c.get("securityContext") or {}).items()
                if k in RESTRICTED_CONTAINER_FIELDS
            }
            for c in [*spec.get("initContainers", []), *spec["containers"]]
        },
    }


def _refusals(installed: Installation) -> list[str]:
    events = installed.get("events")["items"]
    return [
        f"{e['involvedObject']['kind']} {e['involvedObject']['name']}: {e['message']}"
        for e in events
        if e["reason"] in ("FailedCreate", "FailedCreatePodSandBox")
        or "security policy" in e["message"]
    ]


def _pods_of(installed: Installation, workload: dict[str, Any]) -> list[dict[str, Any]]:
    labels = workload["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    pods: list[dict[str, Any]] = installed.get("pods", "-l", selector)["items"]
    return pods


def _apply_hooks(installed: Installation) -> list[dict[str, Any]]:
    """Create the release's hooks (the uninstall Job and its account) as helm would run them."""
    hooks: list[dict[str, Any]] = [
        doc for doc in yaml.safe_load_all(installed.helm("get", "hooks", RELEASE)) if doc
    ]
    hooks.sort(key=lambda hook: hook["kind"] == "Job")  # the Job's account first (hook weights)
    for hook in hooks:
        installed.plane.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=json.dumps(hook))
    return hooks


def _bare_pod(name: str, *, pod: dict[str, Any], container: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "securityContext": pod,
                "containers": [
                    {"name": "c", "image": "busybox:1.36", "securityContext": container}
                ],
            },
        }
    )


def test_a_pod_that_is_not_restricted_is_refused_by_the_apiserver(installed: Installation) -> None:
    as_root = _bare_pod("as-root", pod={}, container={"runAsUser": 0})
    with pytest.raises(ControlPlaneError, match="PodSecurityPolicy: unable to admit pod") as root:
        installed.plane.kubectl("create", "-f", "-", stdin=as_root)
    assert "runAsUser: Invalid value: 0: running with the root UID is forbidden" in str(root.value)
    # no seccomp profile: the policy gives none by default, so this is refused as well
    unconfined = _bare_pod(
        "unconfined",
        pod={"runAsNonRoot": True, "runAsUser": 1000},
        container={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    )
    with pytest.raises(ControlPlaneError, match="is not an allowed seccomp profile") as seccomp:
        installed.plane.kubectl("create", "-f", "-", stdin=unconfined)
    assert "root UID" not in str(seccomp.value)
    restricted = _bare_pod(
        "restricted",
        pod={"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        container={"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    )
    installed.plane.kubectl("create", "-f", "-", stdin=restricted)
    admitted = installed.get("pod", "restricted")
    assert admitted["metadata"]["annotations"]["kubernetes.io/psp"] == "restricted"
    installed.plane.kubectl("delete", "pod", "-n", NAMESPACE, "restricted", "--wait=false")


def test_every_pod_of_the_chart_and_the_operator_passes_restricted_admission_unchanged(
    installed: Installation, chart_operator: OperatorProcess
) -> None:
    bodies = [helpers.session_body("admitted", NAMESPACE), helpers.room_body("admitted", NAMESPACE)]
    for body in bodies:
        installed.plane.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    hooks = _apply_hooks(installed)
    [job] = [hook["metadata"]["name"] for hook in hooks if hook["kind"] == "Job"]
    expected = {"tsess-admitted", "troom-admitted", job}
    try:
        deadline = time.monotonic() + 90
        while True:
            workloads = [
                w
                for kind in WORKLOADS
                for w in installed.get(kind)["items"]
                if w["spec"].get("replicas", 1) > 0  # a Job has none: it runs one pod
            ]
            names = {w["metadata"]["name"] for w in workloads}
            unpodded = [w["metadata"]["name"] for w in workloads if not _pods_of(installed, w)]
            if expected <= names and not unpodded:
                break
            assert time.monotonic() < deadline, (
                f"no pod for {unpodded or sorted(expected - names)}; refusals: {_refusals(installed)}"
            )
            time.sleep(1.0)
        assert {w["kind"] for w in workloads} == {"Deployment", "StatefulSet", "Job"}
        # the default gateway pool's pods too (the chart's default placement for sessions)
        assert [n for n in names if n.endswith("-pool-default")], sorted(names)
        assert _refusals(installed) == []
        for workload in workloads:
            template = {"spec": workload["spec"]["template"]["spec"]}
            for pod in _pods_of(installed, workload):
                where = f"{workload['kind']} {workload['metadata']['name']}"
                assert pod["metadata"]["annotations"]["kubernetes.io/psp"] == "restricted", where
                assert _restricted_fields(pod) == _restricted_fields(template), where
    finally:
        for body in bodies:
            installed.plane.kubectl(
                "delete", body["kind"], "-n", NAMESPACE, "admitted", "--wait=false"
            )
        for hook in hooks:
            installed.plane.kubectl(
                "delete", hook["kind"], "-n", NAMESPACE, hook["metadata"]["name"], "--wait=false"
            )


def test_a_reinstall_finds_the_password_the_kept_database_was_made_with(
    installed: Installation, chart_operator: OperatorProcess
) -> None:
    # last in this module: it uninstalls and installs the release again (the operator goes
    # first, as the release's Deployment would: its role is uninstalled with it)
    chart_operator.stop()
    before = installed.get("secret", "earshot-storage")["data"]["mysql-password"]
    installed.helm("uninstall", RELEASE, "--no-hooks")  # no kubelet here to run the hook Job
    kept = installed.get("secret", "earshot-storage")
    assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    installed.helm("install", RELEASE, str(CHART), *_sets())
    after = installed.get("secret", "earshot-storage")["data"]["mysql-password"]
    assert base64.b64decode(after) == base64.b64decode(before)
