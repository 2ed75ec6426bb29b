"""A private network namespace for the cluster, and TCP into it from the test process.

The cluster (containerd, kubelet, every pod, the control plane) lives in a namespace created with
``ip netns add``: kubelet refuses a loopback node IP, so the node gets ``NODE_IP`` on the
namespace's own ``lo``, and nothing a pod does can reach (or pull from) the outside.

The test process stays in the machine's namespace. It reaches servers inside through
:class:`PortForward` (a loopback port whose connections are made from inside the namespace) or
:func:`connect_inside` (one socket created inside): a thread that calls ``setns(2)`` moves only
itself, and a socket keeps the namespace it was created in whichever thread uses it later.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

NODE_IP: Final = "10.99.0.1"
_CLONE_NEWNET: Final = 0x40000000
_NETNS_DIR: Final = Path("/run/netns")
_ETC_NETNS: Final = Path("/etc/netns")
_T = TypeVar("_T")
#: The two ends of :func:`link`'s veth pair (each in its own namespace).
LINK_HERE: Final = "eslink0"
LINK_THERE: Final = "eslink1"


class NetnsError(RuntimeError):
    """The namespace could not be made or entered (the message says which command failed)."""


def ip(*args: str) -> str:
    """Run ``ip``; its stdout, or NetnsError with its stderr."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def private_namespace(name: str, *, dns: str) -> Iterator[str]:
    """Create namespace ``name`` with ``lo`` up and ``NODE_IP`` on it; delete it afterwards.

    ``/etc/netns/<name>/resolv.conf`` points at ``dns`` so that ``ip netns exec <name> CMD``
    resolves Service names the way a pod does.
    """
    ip("netns", "add", name)
    etc = _ETC_NETNS / name
    try:
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        inside(name, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            f"nameserver {dns}\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        )
        yield name
    finally:
        with contextlib.suppress(OSError):
            (etc / "resolv.conf").unlink()
            etc.rmdir()
        ip("netns", "delete", name)


def inside(name: str, argv: list[str]) -> str:
    """Run ``argv`` in namespace ``name`` (only the network namespace: mounts stay shared)."""
    done = subprocess.run(
        nsenter_argv(name, argv), capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} in {name}: {done.stderr.strip()}")
    return done.stdout


def nsenter_argv(name: str, argv: list[str]) -> list[str]:
    """``argv`` prefixed to run in namespace ``name``'s network only.

    Not ``ip netns exec``: that also gives the process a mount namespace of its own, and kubelet
    and containerd must see each other's mounts (secret volumes, container root filesystems).
    """
    return ["nsenter", f"--net={_NETNS_DIR / name}", "--", *argv]


def _run_inside(name: str, action: Callable[[], _T]) -> _T:
    """Call ``action`` on a fresh thread that has joined namespace ``name``; its result."""
    result: list[_T] = []
    failure: list[BaseException] = []

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_NETNS_DIR / name, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise NetnsError(f"setns({name}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            result.append(action())
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=enter_and_run, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def connect_inside(name: str, host: str, port: int, timeout_s: float = 10.0) -> socket.socket:
    """A TCP socket connected from inside namespace ``name`` to ``host``:``port`` (an IP)."""
    return _run_inside(name, lambda: socket.create_connection((host, port), timeout=timeout_s))


class PortForward:
    """A loopback port in the test's namespace forwarding to ``host``:``port`` inside ``name``.

    One thread accepts; each connection gets one thread copying both ways. Closing stops them
    all and closes every socket.
    """

    def __init__(self, name: str, host: str, port: int) -> None:
        self._name, self._host, self._port = name, host, port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._spawn(self._accept)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, close every connection and join the threads."""
        self._stop.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="port-forward")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._pipe, client)

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = connect_inside(self._name, self._host, self._port)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        upstream.settimeout(None)
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            open_ends = 2
            while open_ends and not self._stop.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source = key.fileobj
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if data:
                        with contextlib.suppress(OSError):
                            peers[source].sendall(data)
                        continue
                    selector.unregister(source)
                    open_ends -= 1
                    with contextlib.suppress(OSError):
                        peers[source].shutdown(socket.SHUT_WR)
        with self._lock:
            for sock in (client, upstream):
                if sock in self._sockets:
                    self._sockets.remove(sock)
                sock.close()


@contextlib.contextmanager
def link(
    name: str, other: str, *, routes_here: list[str], routes_there: list[str], subnet: str
) -> Iterator[tuple[str, str]]:
    """A veth pair between namespaces ``name`` and ``other``, with routes both ways.

    ``subnet`` is a /30 (``10.98.0.0``: ``.1`` here, ``.2`` there); ``routes_here`` are the
    destinations (CIDRs) namespace ``name`` reaches through ``other``, ``routes_there`` those
    ``other`` reaches through ``name`` (say, the pod network behind the cluster's bridge). Both ends
    are made inside their namespaces, so nothing appears on the machine's own interfaces. Yields
    the two addresses; the pair is deleted afterwards (deleting one end deletes both).
    """
    prefix = subnet.rsplit(".", 1)[0]
    last = int(subnet.rsplit(".", 1)[1])
    here, there = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
    end_here, end_there = LINK_HERE, LINK_THERE
    ip("link", "add", end_here, "netns", name, "type", "veth", "peer", "name", end_there,
       "netns", other)  # fmt: skip
    try:
        for namespace, end, address in ((name, end_here, here), (other, end_there, there)):
            ip("-n", namespace, "addr", "add", f"{address}/30", "dev", end)
            ip("-n", namespace, "link", "set", end, "up")
        for destination in routes_here:
            ip("-n", name, "route", "add", destination, "via", there, "dev", end_here)
        for destination in routes_there:
            ip("-n", other, "route", "add", destination, "via", here, "dev", end_there)
        yield here, there
    finally:
        with contextlib.suppress(NetnsError):
            ip("-n", name, "link", "delete", end_here)
