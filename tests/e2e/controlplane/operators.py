"""Run the earshot operator as a process, logged in with a least-privilege service account.

The operator's token belongs to ``earshot-system/earshot-operator``, bound to the ClusterRole
in ``operator/deploy/rbac.yaml`` and nothing else: every e2e test thereby proves the role is
enough.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.e2e.controlplane.cluster import REPO, ControlPlane, ControlPlaneError, write_kubeconfig

RBAC = REPO / "operator" / "deploy" / "rbac.yaml"
NAMESPACE = "earshot-system"
SERVICE_ACCOUNT = "earshot-operator"
#: The gateway pool the e2e operator knows, and its Service's address. No kubelet runs here, so
#: no pool pod can be Ready: the operator is not told this pool's Deployment, and so does not
#: check it (a session on it is Ready once registered).
POOL = "e2e"
POOL_ADDRESS = "earshot-pool-e2e.earshot-system.svc:8000"
#: A pool whose Deployment the operator is told, and reads (tests/e2e/test_pool_health.py).
WATCHED_POOL = "watched"
WATCHED_POOL_DEPLOYMENT = "earshot-pool-watched"


def operator_kubeconfig(plane: ControlPlane) -> Path:
    """Apply the operator's RBAC and write a kubeconfig holding only its service account token."""
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(_namespace()))
    plane.kubectl("apply", "-f", str(RBAC))
    token = service_account_token(plane, NAMESPACE, SERVICE_ACCOUNT)
    path = plane.folder / "operator.kubeconfig"
    write_kubeconfig(path, server=plane.server, ca=plane.ca, user={"token": token})
    return path


def _namespace() -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def service_account_token(
    plane: ControlPlane, namespace: str, account: str, timeout_s: float = 60.0
) -> str:
    """The token Kubernetes 1.20's token controller minted for ``account`` (a Secret of it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = json.loads(
            plane.kubectl("get", "serviceaccount", account, "-n", namespace, "-o", "json")
        )
        for ref in found.get("secrets") or ():
            secret = json.loads(
                plane.kubectl("get", "secret", ref["name"], "-n", namespace, "-o", "json")
            )
            if "token" in (secret.get("data") or {}):
                return base64.b64decode(secret["data"]["token"]).decode()
        time.sleep(0.5)
    raise ControlPlaneError(f"no token for {namespace}/{account} in {timeout_s} s")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OperatorProcess:
    """``python -m earshot_operator`` with a kubeconfig; owns the process and its log."""

    def __init__(self, kubeconfig: Path, *, log: Path, drift_interval_s: float = 2.0) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.metrics_port = free_port()
        self._drift_interval_s = drift_interval_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The running process' id."""
        assert self._process is not None, "operator not started"
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is started and has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def metrics_url(self) -> str:
        """Where the operator serves Prometheus metrics."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the operator and wait for its metrics endpoint."""
        env = {
            # a pool sessions may ask for (tests/e2e/test_pools.py); the default stays dedicated.
            # An operator run with the chart's environment (test_helm_install.py) keeps its pools.
            "EARSHOT_OPERATOR_POOLS": json.dumps(
                [
                    {"name": POOL, "address": POOL_ADDRESS},
                    {
                        "name": WATCHED_POOL,
                        "address": f"{WATCHED_POOL_DEPLOYMENT}.{NAMESPACE}.svc:8000",
                        "deployment": f"{NAMESPACE}/{WATCHED_POOL_DEPLOYMENT}",
                    },
                ]
            ),
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "EARSHOT_OPERATOR_DRIFT_INTERVAL_SECONDS": str(self._drift_interval_s),
            "EARSHOT_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "PYTHONPATH": str(REPO / "operator"),
        }
        env.pop("EARSHOT_OPERATOR_NAMESPACES", None)
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "earshot_operator"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        self._wait_healthy(timeout_s)

    def stop(self) -> None:
        """Stop the operator gracefully (SIGTERM), killing it if it lingers."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the operator (SIGSTOP) for the block, so it accepts nothing, then resume it."""
        assert self._process is not None, "operator not started"
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again, as a rolled operator pod would."""
        self.stop()
        self.start()

    def rss_bytes(self) -> int:
        """Resident memory of the operator process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ControlPlaneError("no VmRSS in /proc status")

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise ControlPlaneError(f"operator did not come up:\n{tail}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
