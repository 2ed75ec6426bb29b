"""What every earshot pod on the test cluster is: non-root, read-only root, Ready, never restarted.

Checked on the running pods through the kubelet (``kubectl exec``): the uid a container runs as,
and a write to its root filesystem that must fail. An init container has exited by then, so for it
the pod's declared security context is checked (the kubelet refuses to start a container as root
under ``runAsNonRoot``) and that it finished at its first run. The rendered manifests are checked
without a cluster by tests/chart/test_chart_conventions.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.release import Release
from tests.e2e.controlplane.cluster import ControlPlaneError


def restarts(release: Release) -> dict[tuple[str, str], int]:
    """Each container's restarts so far, by (pod, container): what the install itself cost."""
    return {
        (pod["metadata"]["name"], status["name"]): status["restartCount"]
        for pod in release.get("pods")["items"]
        for status in pod["status"].get("containerStatuses") or ()
    }


def assert_hardened(
    release: Release, pod: dict[str, Any], *, before: dict[tuple[str, str], int] | None = None
) -> None:
    """Assert that ``pod`` runs as non-root on a read-only root and no container restarted.

    ``restartCount`` is the liveness check: a container whose liveness probe failed, or that
    crashed, was restarted by the kubelet. ``before`` (:func:`restarts`) are restarts already
    counted, e.g. while the install started its stores; none may come after.
    """
    name = pod["metadata"]["name"]
    pod_security = pod["spec"].get("securityContext") or {}
    for container in pod["spec"].get("initContainers") or ():
        security = container.get("securityContext") or {}
        where = (name, container["name"])
        assert security.get("readOnlyRootFilesystem") is True, where
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
    for status in pod["status"].get("initContainerStatuses") or ():
        assert status["restartCount"] == 0, (name, status)
        assert status["state"]["terminated"]["exitCode"] == 0, (name, status)
    for container in pod["spec"]["containers"]:
        where = (name, container["name"])
        assert (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is True, where
        assert release.exec(name, container["name"], "id", "-u").strip() != "0", where
        with pytest.raises(ControlPlaneError, match="Read-only file system"):
            release.exec(name, container["name"], "touch", "/earshot-probe")
    for status in pod["status"]["containerStatuses"]:
        assert status["ready"] is True, (name, status)
        allowed = (before or {}).get((name, status["name"]), 0)
        assert status["restartCount"] == allowed, (name, status)
