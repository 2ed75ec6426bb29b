"""Start etcd, kube-apiserver and kube-controller-manager on loopback; tear them down.

Everything lives in one temporary folder: certificates (openssl), service-account keys, data,
logs and an admin kubeconfig. No kubelet or scheduler runs: pods stay Pending, so tests play the
kubelet by patching pod status where they need a pod to be ready.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kopf

from tests.e2e.controlplane import certificates

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = Path(__file__).with_name("build.sh")
CRDS = REPO / "crds"
RESTRICTED_POLICY = Path(__file__).with_name("restricted-psp.yaml")
BUILD_TIMEOUT_S = 40 * 60  # cold build on a busy 2-core machine
READY_TIMEOUT_S = 90.0


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started (the message names the log to read)."""


@dataclasses.dataclass(frozen=True)
class ControlPlane:
    """A running control plane: where it listens and how to log in as an administrator."""

    folder: Path
    server: str
    kubeconfig: Path
    ca: Path
    admin_cert: Path
    admin_key: Path

    def connection_info(self) -> kopf.ConnectionInfo:
        """Administrator credentials (system:masters) for API clients in tests."""
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=str(self.ca),
            certificate_path=str(self.admin_cert),
            private_key_path=str(self.admin_key),
        )

    def kubectl(self, *args: str, stdin: str | None = None, timeout_s: float = 120.0) -> str:
        """Run kubectl as administrator; its stdout, or ControlPlaneError with its stderr.

        ``timeout_s`` bounds the process: longer than any ``--timeout`` given to kubectl itself.
        """
        done = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


def build_binaries() -> Path:
    """The folder holding kube-apiserver and kube-controller-manager (built on first use)."""
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ControlPlaneError(f"{BUILD_SCRIPT} ran past {BUILD_TIMEOUT_S} s") from error
    if done.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1]) / "bin"


@contextlib.contextmanager
def running_control_plane(*, pod_security_policy: bool = False) -> Iterator[ControlPlane]:
    """Build (once), start and yield a control plane with crds/ applied; stop it afterwards.

    With ``pod_security_policy`` the apiserver runs the PodSecurityPolicy admission plugin with
    restricted-psp.yaml as its only policy, and the controllers create pods with their own
    service accounts: a pod that is not "restricted" is refused.
    """
    binaries = build_binaries()
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ControlPlaneError("etcd not found: apt-get install etcd-server")
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # etcd fsyncs: keep it in RAM
    folder = Path(tempfile.mkdtemp(prefix="earshot-kube-", dir=base))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        pki = certificates.make_pki(folder / "pki")
        etcd_url = _start_etcd(stack, etcd, folder)
        port = _free_port()
        plane = ControlPlane(
            folder=folder,
            server=f"https://127.0.0.1:{port}",
            kubeconfig=folder / "admin.kubeconfig",
            ca=pki / "ca.crt",
            admin_cert=pki / "admin.crt",
            admin_key=pki / "admin.key",
        )
        write_kubeconfig(plane.kubeconfig, server=plane.server, ca=plane.ca, user=_admin(plane))
        _start_apiserver(
            stack, binaries, plane, etcd_url=etcd_url, port=port, pki=pki,
            admission=["PodSecurityPolicy"] if pod_security_policy else [],
        )  # fmt: skip
        _wait_ready(plane)
        if pod_security_policy:
            plane.kubectl("apply", "-f", str(RESTRICTED_POLICY))
        _start_controller_manager(stack, binaries, plane, pki=pki, own_accounts=pod_security_policy)
        plane.kubectl("apply", "-f", str(CRDS))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        _wait_published(plane)
        yield plane


def write_kubeconfig(path: Path, *, server: str, ca: Path, user: dict[str, str]) -> None:
    """A one-context kubeconfig (JSON is valid YAML) for ``server`` and ``user``'s credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "earshot", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "earshot", "context": {"cluster": "earshot", "user": "user"}}],
        "current-context": "earshot",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def _admin(plane: ControlPlane) -> dict[str, str]:
    return {"client-certificate": str(plane.admin_cert), "client-key": str(plane.admin_key)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(stack: contextlib.ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(_stop, process)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start_etcd(stack: contextlib.ExitStack, etcd: str, folder: Path) -> str:
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    _spawn(
        stack,
        [
            etcd,
            "--name=earshot",
            f"--data-dir={folder / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=earshot={peer}",
            "--logger=zap",
            "--log-level=warn",
        ],
        folder / "etcd.log",
    )
    return client


def _start_apiserver(
    stack: contextlib.ExitStack,
    binaries: Path,
    plane: ControlPlane,
    *,
    etcd_url: str,
    port: int,
    pki: Path,
    admission: list[str],
) -> None:
    plugins = [f"--enable-admission-plugins={','.join(admission)}"] if admission else []
    _spawn(
        stack,
        [
            str(binaries / "kube-apiserver"),
            *plugins,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            "--insecure-port=0",
            f"--cert-dir={plane.folder / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={plane.ca}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--v=1",
        ],
        plane.folder / "kube-apiserver.log",
    )


def _start_controller_manager(
    stack: contextlib.ExitStack,
    binaries: Path,
    plane: ControlPlane,
    *,
    pki: Path,
    own_accounts: bool,
) -> None:
    # the garbage collector lives here: without it owner references are never collected; with
    # own_accounts each controller acts as its own service account, so pods are admitted through
    # the policy's RBAC as in a real cluster, not through the administrator's rights
    accounts = ["--use-service-account-credentials"] if own_accounts else []
    _spawn(
        stack,
        [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={plane.kubeconfig}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={plane.ca}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--controllers=*",
            *accounts,
            "--v=1",
        ],
        plane.folder / "kube-controller-manager.log",
    )


def _wait_published(plane: ControlPlane, timeout_s: float = 60.0) -> None:
    # the OpenAPI document (kubectl explain, client-side validation) lags behind Established
    deadline = time.monotonic() + timeout_s
    for kind in ("transcriptionsession", "talkroom"):
        while True:
            try:
                plane.kubectl("explain", f"{kind}.spec")
                break
            except ControlPlaneError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _wait_ready(plane: ControlPlane) -> None:
    context = ssl.create_default_context(cafile=str(plane.ca))
    context.load_cert_chain(str(plane.admin_cert), str(plane.admin_key))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{plane.server}/readyz", context=context, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    log = plane.folder / "kube-apiserver.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise ControlPlaneError(f"kube-apiserver not ready in {READY_TIMEOUT_S} s:\n{tail}")
