"""DNS for Service names: Debian's dnsmasq, answering from a hosts file the Services fill.

Debian has no CoreDNS. dnsmasq listens on the node IP inside the cluster's namespace (kubelet
gives every pod that address as its nameserver) and answers only ``cluster.local``: a name that
is not a Service gets NXDOMAIN at once, nothing is forwarded. A thread polls the Services through
the API and rewrites the hosts file (``<name>.<namespace>.svc.cluster.local`` and ``.svc``) on
every change; SIGHUP makes dnsmasq reread it. Negative answers are not cached, so a pod that asks
before its Service is listed gets the address on its next try.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DOMAIN = "cluster.local"
POLL_S = 0.5


def hosts_lines(services: list[dict[str, Any]]) -> list[str]:
    """Hosts-file lines for every Service with a ClusterIP (headless ones have none)."""
    lines = []
    for service in services:
        metadata, spec = service["metadata"], service["spec"]
        address = spec.get("clusterIP")
        if not address or address == "None":
            continue
        name, namespace = metadata["name"], metadata["namespace"]
        lines.append(f"{address} {name}.{namespace}.svc.{DOMAIN} {name}.{namespace}.svc")
    return sorted(lines)


@contextlib.contextmanager
def service_dns(
    argv_prefix: list[str],
    folder: Path,
    listen: str,
    list_services: Callable[[], list[dict[str, Any]]],
) -> Iterator[None]:
    """Run dnsmasq (``argv_prefix`` puts it in the namespace) and keep its hosts file current."""
    hosts = folder / "service-hosts"
    hosts.write_text("")
    log = folder / "dnsmasq.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *argv_prefix,
                "dnsmasq",
                "--keep-in-foreground",
                "--log-facility=-",
                "--no-resolv",
                "--no-hosts",
                "--no-negcache",
                f"--addn-hosts={hosts}",
                f"--local=/{DOMAIN}/",
                f"--listen-address={listen}",
                "--bind-interfaces",
                "--user=root",
                f"--pid-file={folder / 'dnsmasq.pid'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    failures: list[str] = []

    def refresh() -> None:
        written: list[str] = []
        while not stop.wait(POLL_S):
            try:
                lines = hosts_lines(list_services())
            except Exception as error:  # the API restarting: keep the last answer, try again
                failures.append(str(error))
                continue
            if lines != written:
                hosts.write_text("".join(f"{line}\n" for line in lines))
                process.send_signal(signal.SIGHUP)
                written = lines

    thread = threading.Thread(target=refresh, name="service-dns", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
