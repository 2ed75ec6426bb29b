"""A real single-node Kubernetes 1.20 for tests, in a private network namespace.

``running_cluster()`` starts, as processes it owns, etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet and kube-proxy (built by tests/e2e/controlplane/build.sh from Debian's
source), containerd with runc and the CNI bridge + host-local plugins (Debian packages), and
dnsmasq answering Service names (tests/cluster/dns.py) and a custom metrics API for the HPA
controller (tests/cluster/custom_metrics.py, behind the apiserver's aggregation layer), all inside
the network namespace ``earshot-<pid>-<n>`` (tests/cluster/netns.py); it applies crds/ and waits
for the node to be Ready.
The facts behind each setting are in /work/shared/CLUSTER.md ("Blockers met").

Debugging with kubectl while a test session runs (the harness logs these paths; the folder is
/var/tmp/earshot-cluster-*)::

    kubectl --kubeconfig /var/tmp/earshot-cluster-XXXX/admin.kubeconfig get pods -A
    ip netns exec earshot-<pid>-<n> curl http://<pod IP>:<port>/    # anything inside the namespace

``admin.kubeconfig`` reaches the apiserver through a loopback port the test process forwards into
the namespace, so it works while the session runs. Set EARSHOT_CLUSTER_LOGS to a folder to keep
every server's log after the session.

Teardown, also after a failed test: kubelet stops first so nothing restarts, every container is
killed through containerd, then the servers stop by PID, leftover shims are killed by the PIDs
containerd recorded, every mount under the folder is unmounted, the pods' cgroups, their log
folders under /var/log/pods, the namespace and the folder are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import kopf

from tests.cluster import custom_metrics, dns, netns
from tests.e2e.controlplane import certificates
from tests.e2e.controlplane.cluster import (
    CRDS,
    ControlPlane,
    ControlPlaneError,
    build_binaries,
    write_kubeconfig,
)

NODE_NAME: Final = "earshot-node"
POD_CIDR: Final = "10.244.0.0/24"
SERVICE_CIDR: Final = "10.0.0.0/24"
BRIDGE: Final = "cni0"
#: The sandbox image containerd gives every pod: :func:`pause_archive` of the pause binary that
#: tests/e2e/controlplane/build.sh compiles (gcc -static) from the Kubernetes source it builds.
PAUSE_IMAGE: Final = "localhost/earshot/pause:1.20.2"
READY_TIMEOUT_S: Final = 120.0
_CGROUP_V1: Final = Path("/sys/fs/cgroup")
_POD_LOGS: Final = Path("/var/log/pods")
_SEQUENCE: Final = itertools.count()
_SHM_NEEDED_BYTES: Final = 10 * 2**30
_REPO: Final = Path(__file__).resolve().parents[2]


class ClusterError(ControlPlaneError):
    """The cluster could not be started (the message names the log to read)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A running single-node cluster: the admin's view from the test process, and the namespace."""

    plane: ControlPlane
    netns: str
    containerd_socket: Path

    @property
    def folder(self) -> Path:
        """Where every config, certificate, state directory and log of this cluster lives."""
        return self.plane.folder

    @property
    def kubeconfig(self) -> Path:
        """An administrator's kubeconfig usable from the test process (and a shell)."""
        return self.plane.kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None, timeout_s: float = 120.0) -> str:
        """Run kubectl as administrator; its stdout, or ControlPlaneError with its stderr."""
        return self.plane.kubectl(*args, stdin=stdin, timeout_s=timeout_s)

    def connection_info(self) -> kopf.ConnectionInfo:
        """Administrator credentials for API clients in tests."""
        return self.plane.connection_info()

    def inside(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run in the cluster's network namespace."""
        return netns.nsenter_argv(self.netns, argv)

    def exec_inside(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed like ``ip netns exec``: the namespace plus Service-name DNS."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def connect(self, host: str, port: int) -> socket.socket:
        """A TCP socket to ``host``:``port`` (a pod, Service or node IP) made inside."""
        return netns.connect_inside(self.netns, host, port)

    def import_image(self, archive: Path) -> None:
        """Load a docker-archive into containerd's k8s.io namespace (pods run it, no pull)."""
        self.ctr("images", "import", str(archive))

    def ctr(self, *args: str) -> str:
        """Run ``ctr`` against this cluster's containerd in the k8s.io namespace."""
        done = subprocess.run(
            ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Build (once), start and yield a cluster with crds/ applied and its node Ready."""
    binaries = build_binaries()
    for tool in ("etcd", "containerd", "runc", "ctr", "dnsmasq", "nsenter", "iptables"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} not found: make system-deps installs it")
    if not Path("/usr/lib/cni/bridge").exists():
        raise ClusterError("CNI plugins not found: apt-get install containernetworking-plugins")
    name = f"earshot-{os.getpid()}-{next(_SEQUENCE)}"
    folder = Path(tempfile.mkdtemp(prefix="earshot-cluster-", dir="/var/tmp"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        stack.callback(_keep_logs, folder)
        pki = certificates.make_pki(folder / "pki")
        _make_aggregation_pki(pki)
        stack.enter_context(netns.private_namespace(name, dns=netns.NODE_IP))
        servers = _Servers(stack, name, folder)
        _start_control_plane(servers, binaries, pki)
        forward = stack.enter_context(netns.PortForward(name, "127.0.0.1", 6443))
        plane = ControlPlane(
            folder=folder,
            server=f"https://127.0.0.1:{forward.port}",
            kubeconfig=folder / "admin.kubeconfig",
            ca=pki / "ca.crt",
            admin_cert=pki / "admin.crt",
            admin_key=pki / "admin.key",
        )
        admin = {"client-certificate": str(plane.admin_cert), "client-key": str(plane.admin_key)}
        write_kubeconfig(plane.kubeconfig, server=plane.server, ca=plane.ca, user=admin)
        _wait(lambda: plane.kubectl("get", "--raw", "/readyz"), "kube-apiserver", folder)
        socket_path = folder / "containerd" / "containerd.sock"
        cluster = Cluster(plane=plane, netns=name, containerd_socket=socket_path)
        _start_node(stack, servers, binaries, cluster)
        _start_custom_metrics(servers, cluster)
        plane.kubectl("apply", "-f", str(CRDS))
        plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        _wait(lambda: plane.kubectl("explain", "transcriptionsession.spec"), "OpenAPI", folder)
        yield cluster


class _Servers:
    """Start processes inside the namespace; each one is stopped by its PID on teardown."""

    def __init__(self, stack: contextlib.ExitStack, name: str, folder: Path) -> None:
        self.stack, self.name, self.folder = stack, name, folder

    def start(self, log_name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{log_name}.log").open("wb") as out:
            process = subprocess.Popen(
                netns.nsenter_argv(self.name, argv), stdout=out, stderr=subprocess.STDOUT
            )
        self.stack.callback(_stop, process)
        return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start_control_plane(servers: _Servers, binaries: Path, pki: Path) -> None:
    folder = servers.folder
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else folder
    etcd_data = Path(tempfile.mkdtemp(prefix="earshot-etcd-", dir=shm))  # etcd fsyncs: RAM
    servers.stack.callback(shutil.rmtree, etcd_data, ignore_errors=True)
    # the namespace's own loopback: these ports cannot collide with another session's
    servers.start(
        "etcd",
        [
            "etcd",
            "--name=earshot",
            f"--data-dir={etcd_data}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=earshot=http://127.0.0.1:2380",
            "--logger=zap",
            "--log-level=warn",
        ],
    )
    servers.start(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0",
            f"--advertise-address={netns.NODE_IP}",
            "--secure-port=6443",
            "--insecure-port=0",
            f"--cert-dir={folder / 'certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'admin.crt'}",
            f"--kubelet-client-key={pki / 'admin.key'}",
            # the node's name means nothing to the machine's resolver (exec, logs)
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # the aggregation layer, for the custom metrics API: the aggregator proves itself to
            # an aggregated server with this client certificate, which the server checks against
            # the requestheader CA and name (the cluster CA here: a test, not a production split)
            f"--proxy-client-cert-file={pki / (custom_metrics.FRONT_PROXY + '.crt')}",
            f"--proxy-client-key-file={pki / (custom_metrics.FRONT_PROXY + '.key')}",
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            f"--requestheader-allowed-names={custom_metrics.FRONT_PROXY}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            # dial an APIService's endpoint, not its ClusterIP: the custom metrics server is a
            # process on the node, listed in a hand-written Endpoints, and this path does not
            # depend on kube-proxy having programmed the Service yet
            "--enable-aggregator-routing=true",
            "--v=1",
        ],
    )
    node_kubeconfig = folder / "node.kubeconfig"
    admin = {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}
    write_kubeconfig(
        node_kubeconfig, server="https://127.0.0.1:6443", ca=pki / "ca.crt", user=admin
    )


def _start_node(
    stack: contextlib.ExitStack, servers: _Servers, binaries: Path, cluster: Cluster
) -> None:
    folder = cluster.folder
    pki = folder / "pki"
    node_kubeconfig = folder / "node.kubeconfig"
    servers.start(
        "kube-controller-manager",
        [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={node_kubeconfig}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--controllers=*",
            # the HPA controller reads its metrics every 3 s instead of 15 s: scaling tests wait less
            "--horizontal-pod-autoscaler-sync-period=3s",
            "--v=1",
        ],
    )
    servers.start(
        "kube-scheduler",
        [
            str(binaries / "kube-scheduler"),
            f"--kubeconfig={node_kubeconfig}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--v=1",
        ],
    )
    _write_cni_config(folder)
    # a route to the Service range, so clients in the namespace reach ClusterIPs (kube-proxy's
    # OUTPUT rules rewrite them; without a route connect() fails before any rule is seen)
    netns.ip("-n", cluster.netns, "link", "add", BRIDGE, "type", "bridge")
    netns.ip("-n", cluster.netns, "addr", "add", "10.244.0.1/24", "dev", BRIDGE)
    netns.ip("-n", cluster.netns, "link", "set", BRIDGE, "up")
    netns.ip("-n", cluster.netns, "route", "add", SERVICE_CIDR, "dev", BRIDGE)
    images_root = _containerd_root()
    stack.callback(shutil.rmtree, images_root, ignore_errors=True)
    config = _write_containerd_config(folder, cluster.containerd_socket, images_root)
    cgroup_root = f"/{cluster.netns}"
    stack.callback(_remove_cgroups, cgroup_root)
    _make_cgroups(cgroup_root)
    stack.callback(_kill_shims_and_unmount, folder, images_root)
    servers.start("containerd", ["containerd", f"--config={config}"])
    stack.callback(_clean_containers, cluster)
    _wait(lambda: cluster.ctr("version"), "containerd", folder)
    cluster.import_image(pause_archive(binaries / "pause", folder))
    stack.enter_context(
        dns.service_dns(
            netns.nsenter_argv(cluster.netns, []),
            folder,
            netns.NODE_IP,
            lambda: _services(cluster),
        )
    )
    kubelet_config = _write_kubelet_config(folder, cgroup_root)
    stack.callback(_remove_pod_logs, cluster, cgroup_root)
    kubelet = servers.start(
        "kubelet",
        [
            str(binaries / "kubelet"),
            f"--config={kubelet_config}",
            f"--kubeconfig={node_kubeconfig}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{cluster.containerd_socket}",
            f"--node-ip={netns.NODE_IP}",
            f"--hostname-override={NODE_NAME}",
            f"--root-dir={folder / 'kubelet'}",
            f"--cert-dir={folder / 'kubelet-pki'}",
            "--v=1",
        ],
    )
    # kubelet stops before containerd and the control plane (callbacks run last-in, first-out)
    stack.callback(_stop, kubelet)
    servers.start(
        "kube-proxy",
        [
            str(binaries / "kube-proxy"),
            f"--kubeconfig={node_kubeconfig}",
            f"--hostname-override={NODE_NAME}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={POD_CIDR}",
            # pods on one bridge reach each other through ClusterIPs only with replies un-NATed
            "--masquerade-all=true",
            # conntrack sysctls are the machine's, not the namespace's: leave them alone
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
            "--v=1",
        ],
    )
    _wait(
        lambda: cluster.kubectl(
            "wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=5s"
        ),
        "node Ready (kubelet)",
        folder,
    )
    # pods may be scheduled only once the default service account exists
    _wait(lambda: cluster.kubectl("get", "serviceaccount", "default"), "default account", folder)


def _make_aggregation_pki(pki: Path) -> None:
    """The aggregator's client certificate and the custom metrics server's serving certificate."""
    certificates.sign(
        pki, custom_metrics.FRONT_PROXY, f"/CN={custom_metrics.FRONT_PROXY}",
        "extendedKeyUsage=clientAuth",
    )  # fmt: skip
    service = f"{custom_metrics.SERVICE}.{custom_metrics.SERVICE_NAMESPACE}.svc"
    certificates.sign(pki, "custom-metrics", f"/CN={service}", f"subjectAltName=DNS:{service}")


def _start_custom_metrics(servers: _Servers, cluster: Cluster) -> None:
    """Start tests/cluster/custom_metrics.py on the node IP and register it as an APIService."""
    pki = cluster.folder / "pki"
    servers.start(
        "custom-metrics",
        [
            "env",
            f"PYTHONPATH={_REPO}",
            sys.executable,
            "-m",
            "tests.cluster.custom_metrics",
            f"--listen={netns.NODE_IP}",
            "--apiserver=https://127.0.0.1:6443",
            f"--pki={pki}",
        ],
    )
    for manifest in custom_metrics.manifests((pki / "ca.crt").read_bytes(), netns.NODE_IP):
        cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    api = f"apiservice/{custom_metrics.VERSION}.{custom_metrics.GROUP}"
    _wait(
        lambda: cluster.kubectl("wait", "--for=condition=Available", api, "--timeout=5s"),
        "custom metrics API",
        cluster.folder,
    )


def _services(cluster: Cluster) -> list[dict[str, Any]]:
    listed = json.loads(cluster.kubectl("get", "services", "-A", "-o", "json"))
    items: list[dict[str, Any]] = listed["items"]
    return items


def _write_cni_config(folder: Path) -> None:
    net_d = folder / "cni" / "net.d"
    net_d.mkdir(parents=True)
    config = {
        "cniVersion": "0.4.0",
        "name": "earshot",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": "10.244.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(folder / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (net_d / "10-earshot.conflist").write_text(json.dumps(config, indent=2))


def _containerd_root() -> Path:
    """Where containerd keeps image content and snapshots: in RAM when there is room.

    A session imports and unpacks a few GB of images; deleting them from this machine's disk
    (ext4 with online discard) takes minutes, from /dev/shm no time.
    """
    shm = Path("/dev/shm")
    if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > _SHM_NEEDED_BYTES:
        return Path(tempfile.mkdtemp(prefix="earshot-containerd-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="earshot-containerd-", dir="/var/tmp"))


def _write_containerd_config(folder: Path, socket_path: Path, root: Path) -> Path:
    base = folder / "containerd"
    base.mkdir()
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config = f"""
version = 2
root = "{root}"
state = "{base / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket_path}"
[ttrpc]
  address = "{socket_path}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # the sandbox lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (CLUSTER.md, blocker 1)
  restrict_oom_score_adj = true
  # pods' network namespaces under our state folder, not the machine's /run/netns
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{folder / "cni" / "net.d"}"
  [{cri}.registry]
    config_path = ""
"""
    path = base / "config.toml"
    path.write_text(config)
    return path


def _write_kubelet_config(folder: Path, cgroup_root: str) -> Path:
    pki = folder / "pki"
    (folder / "resolv.conf").write_text("")  # pods get the cluster DNS and no host search path
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": netns.NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "makeIPTablesUtilChains": False,
        "clusterDomain": dns.DOMAIN,
        "clusterDNS": [netns.NODE_IP],
        "resolvConf": str(folder / "resolv.conf"),
        "serializeImagePulls": False,
        # never collect the images the tests imported; no eviction on a busy shared machine
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "protectKernelDefaults": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }
    path = folder / "kubelet.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def pause_archive(binary: Path, folder: Path) -> Path:
    """:data:`PAUSE_IMAGE`: a docker-archive of a FROM-scratch image holding only ``binary``.

    Written into ``folder`` as ``pause.tar``; nothing else builds a pause image.
    """
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w") as layer_tar:
        info = layer_tar.gettarinfo(str(binary), arcname="pause")
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with binary.open("rb") as data:
            layer_tar.addfile(info, data)
    layer = layer_buffer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/cluster/harness.py: pause from build.sh"}],
    }
    config_bytes = json.dumps(image_config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]
    path = folder / "pause.tar"
    with tarfile.open(path, mode="w") as archive:
        for member, payload in (
            ("layer.tar", layer),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            entry = tarfile.TarInfo(member)
            entry.size = len(payload)
            archive.addfile(entry, io.BytesIO(payload))
    return path


def _controllers() -> list[Path]:
    return [
        path
        for path in sorted(_CGROUP_V1.iterdir())
        if path.is_dir() and path.name != "unified" and (path / "cgroup.procs").exists()
    ]


def _make_cgroups(root: str) -> None:
    """kubelet's cgroup root, one per session, in every v1 hierarchy (kubelet checks them all)."""
    for controller in _controllers():
        own = controller / root.lstrip("/")
        own.mkdir(exist_ok=True)
        if controller.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (own / knob).write_text((controller / knob).read_text())


def _remove_cgroups(root: str) -> None:
    # runc also makes the containers' folders in the cgroup v2 ("unified") hierarchy
    for controller in (p for p in _CGROUP_V1.iterdir() if p.is_dir()):
        own = controller / root.lstrip("/")
        if not own.exists():
            continue
        for directory in sorted(
            (p for p in own.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            own.rmdir()


def _clean_containers(cluster: Cluster) -> None:
    """Kill every container of this containerd, then whatever shim outlived it; unmount all."""
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
        for task in cluster.ctr("tasks", "list", "--quiet").split():
            with contextlib.suppress(ClusterError):
                cluster.ctr("tasks", "kill", "--signal=SIGKILL", "--all", task)
    deadline = time.monotonic() + 10
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
        while cluster.ctr("tasks", "list", "--quiet").split() and time.monotonic() < deadline:
            time.sleep(0.2)


def _kill_shims_and_unmount(folder: Path, *others: Path) -> None:
    tasks = folder / "containerd" / "state" / "io.containerd.runtime.v2.task"
    for pid_file in tasks.glob("*/*/shim.pid") if tasks.exists() else ():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().strip()), 9)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(Path(point).is_relative_to(base) for base in (folder, *others)):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def _remove_pod_logs(cluster: Cluster, cgroup_root: str) -> None:
    """Remove the log folders kubelet wrote under /var/log/pods for this cluster's pods.

    A pod's UID is known from the API, kubelet's pod folders or its cgroup, whichever still
    remembers it (a namespace deleted just before teardown may be gone from the first).
    """
    uids = {path.name for path in (cluster.folder / "kubelet" / "pods").glob("*")}
    for pod_cgroup in _CGROUP_V1.glob(f"*/{cgroup_root.lstrip('/')}/kubepods/**/pod*"):
        uids.add(pod_cgroup.name.removeprefix("pod"))
    with contextlib.suppress(ControlPlaneError, subprocess.TimeoutExpired):
        pods = json.loads(cluster.kubectl("get", "pods", "-A", "-o", "json"))["items"]
        uids |= {pod["metadata"]["uid"] for pod in pods}
    for folder in _POD_LOGS.glob("*_*_*") if _POD_LOGS.exists() else ():
        if folder.name.rsplit("_", 1)[-1] in uids:
            shutil.rmtree(folder, ignore_errors=True)
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if not link.resolve().exists():
                link.unlink()


def _keep_logs(folder: Path) -> None:
    keep = os.environ.get("EARSHOT_CLUSTER_LOGS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for log in folder.glob("*.log"):
            shutil.copy(log, Path(keep) / log.name)
    _kill_shims_and_unmount(folder)


def _wait(probe: object, what: str, folder: Path, timeout_s: float = READY_TIMEOUT_S) -> None:
    assert callable(probe)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            probe()
            return
        except (ControlPlaneError, subprocess.TimeoutExpired) as error:
            last = str(error)
        time.sleep(0.5)
    tails = []
    for log in sorted(folder.glob("*.log")):
        tails.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    raise ClusterError(f"{what} not ready in {timeout_s} s ({last}):\n" + "\n".join(tails))
