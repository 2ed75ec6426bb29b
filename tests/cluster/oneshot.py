"""Run an image archive once with runc, confined as the chart confines its pods, without a cluster.

The container gets what the chart's security contexts give a pod: a read-only root filesystem, the
uid the chart runs it as, no capabilities, no privilege escalation, and writable memory-backed
folders only where the chart mounts a volume. It runs in a network namespace of its own with only
loopback up, so a server inside it can be probed from inside, on its usual ports, beside any other
test's servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Confinement:
    """How the chart runs a container: as whom, and what it may write or read besides its image."""

    uid: int
    gid: int
    writable: Sequence[str] = ()
    binds: Mapping[str, Path] = field(default_factory=dict)  # container path -> host folder (ro)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a one-shot run printed and how it ended."""

    returncode: int
    output: str


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


@contextlib.contextmanager
def _rootfs(archive: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    # buildah mounts the image (no copy) and tells its OCI configuration.
    container = _run(["buildah", "from", "--pull-never", "--quiet", f"docker-archive:{archive}"])
    try:
        config: dict[str, Any] = json.loads(
            _run(["buildah", "inspect", "--type", "container", container])
        )["OCIv1"]["config"]
        yield Path(_run(["buildah", "mount", container])), config
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


@contextlib.contextmanager
def _network_namespace() -> Iterator[Path]:
    name = f"earshot-oneshot-{uuid.uuid4().hex[:8]}"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield Path("/var/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _spec(
    rootfs: Path,
    image: dict[str, Any],
    args: list[str],
    how: Confinement,
    netns: Path,
    volumes: Path,
) -> dict[str, Any]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env |= dict(item.split("=", 1) for item in image.get("Env") or [])
    env |= dict(how.env)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=268435456"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]  # fmt: skip
    # emptyDir volumes: fresh world-writable folders, as kubelet makes them (a tmpfs would take
    # the mode of the image's folder it covers)
    for index, path in enumerate(how.writable):
        volume = volumes / str(index)
        volume.mkdir()
        volume.chmod(0o777)
        mounts.append({"destination": path, "type": "bind", "source": str(volume),
                       "options": ["rbind", "rw", "nosuid", "nodev"]})  # fmt: skip
    mounts += [
        {"destination": path, "type": "bind", "source": str(source),
         "options": ["rbind", "ro", "nosuid", "nodev"]}
        for path, source in how.binds.items()
    ]  # fmt: skip
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": how.uid, "gid": how.gid},
            "args": args,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": image.get("WorkingDir") or "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "oneshot",
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": str(netns)},
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


def entry_command(archive: Path) -> list[str]:
    """The image's ENTRYPOINT followed by its CMD."""
    with _rootfs(archive) as (_, image):
        return list(image.get("Entrypoint") or []) + list(image.get("Cmd") or [])


def run(archive: Path, args: list[str] | None, how: Confinement, *, timeout: float) -> Outcome:
    """Run ``args`` (default: the image's entry command) in the image, confined as ``how`` says.

    Raises:
        subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds (it is killed first).
    """
    with (
        _rootfs(archive) as (rootfs, image),
        _network_namespace() as netns,
        tempfile.TemporaryDirectory(prefix="earshot-oneshot-") as bundle,
    ):
        command = (
            args if args is not None else (image.get("Entrypoint") or []) + (image.get("Cmd") or [])
        )
        Path(bundle, "volumes").mkdir()
        spec = _spec(rootfs, image, list(command), how, netns, Path(bundle, "volumes"))
        Path(bundle, "config.json").write_text(json.dumps(spec))
        name = f"earshot-oneshot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            done = subprocess.run(
                ["runc", "run", "--bundle", bundle, name], stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=timeout, check=False,
            )  # fmt: skip
        finally:
            subprocess.run(["runc", "delete", "--force", name], capture_output=True, check=False)
        return Outcome(done.returncode, done.stdout + done.stderr)


def serve_and_probe(
    server: Sequence[str], probe: Sequence[str], *, attempts: int = 240
) -> list[str]:
    """A ``sh -c`` command line that starts ``server`` and runs ``probe`` every half second until
    it succeeds (exit 0, the server's log printed) or ``attempts`` run out (exit 1)."""
    script = (
        f"{shlex.join(server)} >/dev/shm/server.log 2>&1 & server=$!; i=0; "
        f"until {shlex.join(probe)} >/dev/null 2>&1; do "
        f"  i=$((i+1)); if [ $i -ge {attempts} ] || ! kill -0 $server 2>/dev/null; then "
        "    echo 'probe never passed; server log:'; cat /dev/shm/server.log; exit 1; fi; "
        "  sleep 0.5; "
        "done; echo probe passed; kill $server; wait $server; cat /dev/shm/server.log; exit 0"
    )
    return ["sh", "-c", script]
