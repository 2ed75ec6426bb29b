"""The cluster harness is a real cluster: kubelet runs pods, Services resolve and route, and
teardown leaves nothing behind."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path

from tests.cluster import netns
from tests.cluster.harness import NODE_NAME, PAUSE_IMAGE, POD_CIDR, Cluster, running_cluster


def _pause_deployment(name: str, replicas: int) -> str:
    labels = {"app": name}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}
                        ]
                    },
                },
            },
        }
    )


def test_the_node_is_ready_by_its_own_kubelet(cluster: Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json"))
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True", ready
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"
    assert {"type": "InternalIP", "address": netns.NODE_IP} in node["status"]["addresses"]


def test_a_deployment_of_a_local_image_gets_running_pods_on_the_bridge(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=_pause_deployment("idle", 2))
    cluster.kubectl(
        "rollout", "status", "-n", namespace, "deployment/idle", "--timeout=120s", timeout_s=150
    )
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    assert len(pods) == 2
    prefix = POD_CIDR.rsplit(".", 2)[0]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["podIP"].startswith(prefix + "."), pod["status"]
        assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert len({pod["status"]["podIP"] for pod in pods}) == 2


def test_service_names_resolve_inside_the_namespace_the_way_pods_resolve_them(
    cluster: Cluster,
) -> None:
    answer = subprocess.run(
        cluster.exec_inside(["getent", "hosts", "kubernetes.default.svc"]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split()[0] == "10.0.0.1"


def test_a_name_that_is_no_service_is_not_resolved(cluster: Cluster) -> None:
    answer = subprocess.run(
        cluster.exec_inside(["getent", "hosts", "nosuch.default.svc.cluster.local"]),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert answer.returncode == 2, answer.stdout  # getent: key not found


def test_a_new_service_resolves_within_seconds(cluster: Cluster, namespace: str) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fresh"},
        "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(service))
    address = cluster.kubectl(
        "get", "service", "fresh", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
    )
    deadline = time.monotonic() + 15
    resolved = ""
    while time.monotonic() < deadline and resolved != address:
        answer = subprocess.run(
            cluster.exec_inside(["getent", "hosts", f"fresh.{namespace}.svc.cluster.local"]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        resolved = answer.stdout.split()[0] if answer.stdout else ""
        time.sleep(0.2)
    assert resolved == address


def test_the_apiserver_answers_through_its_cluster_ip_from_the_node_namespace(
    cluster: Cluster,
) -> None:
    # kube-proxy's rules take 10.0.0.1:443 to the apiserver; its certificate names that IP
    context = ssl.create_default_context(cafile=str(cluster.plane.ca))
    context.load_cert_chain(str(cluster.plane.admin_cert), str(cluster.plane.admin_key))
    raw = cluster.connect("10.0.0.1", 443)
    with context.wrap_socket(raw, server_hostname="10.0.0.1") as tls:
        tls.sendall(b"GET /readyz HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


def test_teardown_leaves_no_namespace_mount_process_or_cgroup_behind() -> None:
    with running_cluster() as second:
        name, folder = second.netns, second.folder
        namespace = "leftover"
        second.kubectl("create", "namespace", namespace)
        second.kubectl("apply", "-n", namespace, "-f", "-", stdin=_pause_deployment("idle", 1))
        second.kubectl(
            "rollout", "status", "-n", namespace, "deployment/idle", "--timeout=120s", timeout_s=150
        )
        shims = _processes_mentioning(str(folder))
        assert shims, "a running pod has a containerd shim"
    assert not (Path("/run/netns") / name).exists()
    assert str(folder) not in Path("/proc/self/mountinfo").read_text()
    assert not folder.exists()
    assert not _processes_mentioning(str(folder))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{name}"))
    assert not [p for p in Path("/var/log/pods").glob("*") if p.name.startswith(namespace)]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command:
            found.append(int(proc.name))
    return found
