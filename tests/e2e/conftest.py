"""Fixtures for e2e tests: a real control plane, the operator as a process, an API client.

The control plane is built and started here (tests/e2e/controlplane/build.sh caches the binaries
under ~/.cache/earshot): if that fails the tests fail with the reason, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from earshot_operator.clients import KubeClient
from tests.e2e.controlplane.cluster import ControlPlane, running_control_plane
from tests.e2e.controlplane.operators import OperatorProcess, operator_kubeconfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e``."""
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager with crds/ applied.

    Set EARSHOT_E2E_LOGS to a folder to keep the servers' and the operator's logs.
    """
    with running_control_plane() as plane:
        yield plane
        keep = os.environ.get("EARSHOT_E2E_LOGS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in plane.folder.glob("*.log"):
                shutil.copy(log, Path(keep) / log.name)


@pytest.fixture(scope="session")
def operator_process(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    """The operator, running with the least-privilege token of operator/deploy/rbac.yaml."""
    kubeconfig = operator_kubeconfig(control_plane)
    log = control_plane.folder / "operator.log"
    with OperatorProcess(kubeconfig, log=log) as process:
        yield process
    # a refused request that kopf retried may still let tests pass: the role must not miss one
    # (a drift repair racing a test's namespace deletion is refused by namespace lifecycle
    # admission, "because it is being terminated": that is not a missing permission)
    forbidden = [
        line
        for line in log.read_text().splitlines()
        if "Forbidden" in line and "because it is being terminated" not in line
    ]
    assert not forbidden, f"the operator was refused requests:\n{forbidden[0]}"


@pytest_asyncio.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    """An administrator's API client for arranging and checking (not the operator's)."""
    async with KubeClient.connect(control_plane.connection_info()) as client:
        yield client


@pytest.fixture
def namespace(control_plane: ControlPlane, operator_process: OperatorProcess) -> Iterator[str]:
    """A fresh namespace per test, with the operator running; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")
