"""Play the kubelet for one pod outside a cluster: its command and environment from the real objects.

No kubelet runs in the e2e control plane. A test that needs a gateway pod running starts its
container as a process here, with the environment the kubelet would give it: the ConfigMap and
Secret values the Deployment names, and the pod's service account token mounted in a folder. What a
node provides differently is said where it is replaced (the API server's address, the pod's own
network namespace: a free port).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from earshot_operator.clients import KubeClient, path_of
from tests.e2e.controlplane.cluster import REPO


@dataclass(frozen=True)
class Container:
    """One container of a pod template, resolved as the kubelet resolves it."""

    command: list[str]
    env: dict[str, str]
    service_account: str | None
    readiness_path: str


async def container_of(api: KubeClient, namespace: str, deployment: str, *, name: str) -> Container:
    """The command, environment and mounted account of container ``name`` of a Deployment."""
    found = await api.get(path_of("apps/v1", "Deployment", namespace=namespace, name=deployment))
    assert found is not None, f"no Deployment {namespace}/{deployment}"
    pod = found["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == name]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or ():
        env.update(await _config_data(api, namespace, source["configMapRef"]["name"]))
    for item in container.get("env") or ():
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = (await _config_data(api, namespace, ref["name"]))[ref["key"]]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = await api.get(path_of("v1", "Secret", namespace=namespace, name=ref["name"]))
            assert secret is not None, f"Secret {ref['name']} (for {item['name']}) is missing"
            env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    mounted = pod.get("serviceAccountName") if pod.get("automountServiceAccountToken") else None
    return Container(
        command=list(container["command"]),
        env=env,
        service_account=mounted,
        readiness_path=container["readinessProbe"]["httpGet"]["path"],
    )


async def config_error(api: KubeClient, pod: dict[str, Any]) -> str | None:
    """What the kubelet says (its reason: ``CreateContainerConfigError``) when a Secret, or a key
    of one, that a container's environment reads is not in the pod's namespace; None when every
    required Secret reference resolves. The words are the kubelet's (pkg/kubelet/kubelet_pods.go,
    and its Secret manager's NotFound error).
    """
    namespace = pod["metadata"]["namespace"]
    for container in pod["spec"]["containers"]:
        for item in container.get("env") or ():
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None or ref.get("optional"):
                continue
            secret = await api.get(path_of("v1", "Secret", namespace=namespace, name=ref["name"]))
            if secret is None:
                return f'secret "{ref["name"]}" not found'
            if ref["key"] not in (secret.get("data") or {}):
                return f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
    return None


async def _config_data(api: KubeClient, namespace: str, name: str) -> dict[str, str]:
    config = await api.get(path_of("v1", "ConfigMap", namespace=namespace, name=name))
    assert config is not None, f"ConfigMap {name} is missing"
    data: dict[str, str] = config.get("data") or {}
    return data


async def mount_token(
    api: KubeClient, namespace: str, account: str, *, ca: Path, folder: Path, within: float = 60.0
) -> Path:
    """Write the account's token and the cluster CA where a pod finds them; returns the folder.

    Kubernetes 1.20's token controller mints a Secret per service account: its token is used.
    """
    deadline = time.monotonic() + within
    path = path_of("v1", "ServiceAccount", namespace=namespace, name=account)
    while time.monotonic() < deadline:
        found = await api.get(path)
        for ref in (found or {}).get("secrets") or ():
            secret = await api.get(path_of("v1", "Secret", namespace=namespace, name=ref["name"]))
            if secret is not None and "token" in (secret.get("data") or {}):
                token = base64.b64decode(secret["data"]["token"])
                await asyncio.to_thread(_write_mount, folder, token=token, ca=ca)
                return folder
        await asyncio.sleep(0.3)
    raise AssertionError(f"no token for service account {namespace}/{account} in {within} s")


def _write_mount(folder: Path, *, token: bytes, ca: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "token").write_bytes(token)
    (folder / "ca.crt").write_bytes(ca.read_bytes())


class ContainerProcess:
    """An ``earshot`` container command run as a process of this checkout; owns it and its log."""

    def __init__(self, command: list[str], env: dict[str, str], *, log: Path) -> None:
        assert command[0] == "earshot", command
        self.argv = [sys.executable, "-m", "earshot", *command[1:]]
        self.env = env
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the process (the environment replaces ours, as in a container)."""
        base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        paths = os.pathsep.join([str(REPO / "services"), str(REPO / "operator")])
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                self.argv,
                env={**base, "PYTHONPATH": paths, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process is not None and self._process.poll() is None

    def probe(self, url: str) -> tuple[int, bytes]:
        """One HTTP GET, as a probe makes it: its status (0: no answer) and body."""
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())
        except (urllib.error.URLError, OSError):
            return 0, b""

    def tail(self, characters: int = 4000) -> str:
        """The end of the log."""
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a container; SIGKILL after 20 s."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def role_rules(template: Path) -> list[dict[str, Any]]:
    """The rules of the one Role in a Helm template (they carry no template expressions)."""
    text = template.read_text()
    start = text.index("kind: Role\n")
    rules = text[text.index("rules:\n", start) : text.index("---", start)]
    parsed: list[dict[str, Any]] = yaml.safe_load(rules)["rules"]
    return parsed


async def mark_pods_unready(api: KubeClient, namespace: str, instance: str) -> int:
    """What the kubelet does when a readiness probe fails: the pods' Ready conditions go False.

    Returns:
        How many pods were marked.
    """
    answer = await api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        params={"labelSelector": f"app.kubernetes.io/instance={instance}"},
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for pod in answer["items"]:
        status = pod.get("status") or {}
        conditions = [
            {**c, "status": "False", "lastTransitionTime": now}
            if c["type"] in ("Ready", "ContainersReady")
            else c
            for c in status.get("conditions") or ()
        ]
        statuses = [
            {**c, "ready": c["name"] != "gateway" and c.get("ready", False)}
            for c in status.get("containerStatuses") or ()
        ]
        path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/status"
        await api.patch(path, {"status": {"conditions": conditions, "containerStatuses": statuses}})
    return len(answer["items"])
