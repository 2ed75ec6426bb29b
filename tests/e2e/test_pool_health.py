"""A session on a gateway pool that has no Ready gateway is not Ready, and says why within seconds.

The real API server and operator; the pool's Deployment is a real one that the controller-manager
makes pods for. No kubelet runs here: the test writes into a pod's status what a kubelet would
report (an image it cannot pull; a storage Secret it cannot find, decided from the real objects by
``kubelets.config_error``), as tests/e2e/test_events.py does for a dedicated gateway.
Nothing here makes a pod Ready, so a pool coming back (the session Ready again) is shown on a
real kubelet: tests/cluster/test_pool_warnings.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers, kubelets
from tests.e2e.controlplane.cluster import ControlPlane
from tests.e2e.controlplane.operators import NAMESPACE, WATCHED_POOL, WATCHED_POOL_DEPLOYMENT
from tests.e2e.test_events import WITHIN_S, _event, _events, _reason_is, _report, _waiting

pytestmark = pytest.mark.asyncio
PLACED = {"placement": {"pool": WATCHED_POOL}}
LABELS = {"app.kubernetes.io/name": "earshot", "app.kubernetes.io/component": "pool-watched"}
DEPLOYMENT = path_of("apps/v1", "Deployment", namespace=NAMESPACE, name=WATCHED_POOL_DEPLOYMENT)
PULL_MESSAGE = 'Back-off pulling image "registry.invalid/earshot:0"'
STORAGE_SECRET = "earshot-pool-watched-storage"
SECRET = path_of("v1", "Secret", namespace=NAMESPACE, name=STORAGE_SECRET)


def _pool_deployment() -> dict[str, Any]:
    container = {"name": "gateway", "image": "registry.invalid/earshot:0"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WATCHED_POOL_DEPLOYMENT, "namespace": NAMESPACE, "labels": LABELS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": LABELS},
            "template": {"metadata": {"labels": LABELS}, "spec": {"containers": [container]}},
        },
    }


def _pool_reading_its_stores() -> dict[str, Any]:
    """The pool's Deployment whose gateway reads its stores from a Secret, as the chart's does."""
    deployment = _pool_deployment()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    container["env"] = [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": STORAGE_SECRET, "key": key}},
        }
        for variable, key in (
            ("EARSHOT_PARTIALS_URL", "redis-url"),
            ("EARSHOT_SEGMENTS_URL", "mysql-url"),
        )
    ]
    return deployment


async def _pool_pod(api: KubeClient) -> dict[str, Any] | None:
    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    pods = await helpers.list_items(api, f"/api/v1/namespaces/{NAMESPACE}/pods", selector=selector)
    return pods[0] if pods else None


@pytest_asyncio.fixture
async def no_pool(api: KubeClient) -> AsyncIterator[None]:
    """The watched pool's Deployment is absent at the start, and removed at the end."""
    await api.delete(DEPLOYMENT)
    yield
    await api.delete(DEPLOYMENT)


async def test_a_session_on_a_pool_without_a_ready_gateway_says_why(
    api: KubeClient, namespace: str, no_pool: None, control_plane: ControlPlane
) -> None:
    body = helpers.session_body("onpool", namespace, sessionId="pbx:9", **PLACED)
    await api.create(body)
    missing = await helpers.eventually(
        lambda: _reason_is(api, body, "PoolMissing"), timeout_s=WITHIN_S, what="PoolMissing"
    )
    status = missing["status"]
    assert status["message"] == (
        f"gateway pool {WATCHED_POOL}: Deployment {NAMESPACE}/{WATCHED_POOL_DEPLOYMENT} not found"
    )
    assert status["phase"] == "Provisioning"
    assert status["registration"]["sessionId"] == "pbx:9"  # admitted once a gateway is Ready
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c["reason"]) for c in ready] == [("False", "PoolMissing")]
    warning = await helpers.eventually(
        lambda: _event(api, namespace, "onpool", "Warning", "PoolMissing"), timeout_s=WITHIN_S
    )
    assert warning["message"] == status["message"]

    # the pool comes, but its image cannot be pulled: the pool loop tells the session
    await api.create(_pool_deployment())
    pod = await helpers.eventually(lambda: _pool_pod(api), what="the pool's pod")
    await _report(api, pod, _waiting(pod, "gateway", "ImagePullBackOff", PULL_MESSAGE))
    pulling = await helpers.eventually(
        lambda: _reason_is(api, body, "ImagePullBackOff"), timeout_s=WITHIN_S, what="the pull"
    )
    expected = (
        f"gateway pool {WATCHED_POOL} has no Ready gateway (0 of 1): container gateway of pod "
        f"{pod['metadata']['name']}: {PULL_MESSAGE}"
    )
    assert pulling["status"]["message"] == expected
    await helpers.eventually(
        lambda: _event(api, namespace, "onpool", "Warning", "ImagePullBackOff"), timeout_s=WITHIN_S
    )
    row = control_plane.kubectl("get", "tsess", "onpool", "-n", namespace, "--no-headers").split()
    assert row[1:4] == ["Provisioning", "False", "ImagePullBackOff"]
    # one Warning per cause (the pod may also have been seen before its report: PoolUnavailable)
    warnings = [
        e["reason"] for e in await _events(api, namespace, "onpool") if e["type"] == "Warning"
    ]
    assert (warnings.count("PoolMissing"), warnings.count("ImagePullBackOff")) == (1, 1), warnings
    assert set(warnings) <= {"PoolMissing", "PoolUnavailable", "ImagePullBackOff"}, warnings


@pytest_asyncio.fixture
async def no_storage_secret(api: KubeClient) -> AsyncIterator[None]:
    """The pool's storage Secret is absent at the start, and removed at the end."""
    await api.delete(SECRET)
    yield
    await api.delete(SECRET)


async def test_a_pool_whose_storage_secret_is_missing_says_so_until_the_secret_comes(
    api: KubeClient,
    namespace: str,
    no_pool: None,
    no_storage_secret: None,
    control_plane: ControlPlane,
) -> None:
    body = helpers.session_body("nosecret", namespace, sessionId="pbx:10", **PLACED)
    await api.create(_pool_reading_its_stores())
    await api.create(body)
    pod = await helpers.eventually(lambda: _pool_pod(api), what="the pool's pod")
    said = await kubelets.config_error(api, pod)
    assert said == f'secret "{STORAGE_SECRET}" not found'
    await _report(api, pod, _waiting(pod, "gateway", "CreateContainerConfigError", said))

    stuck = await helpers.eventually(
        lambda: _reason_is(api, body, "CreateContainerConfigError"),
        timeout_s=WITHIN_S,
        what="CreateContainerConfigError",
    )
    assert stuck["status"]["message"] == (
        f"gateway pool {WATCHED_POOL} has no Ready gateway (0 of 1): container gateway of pod "
        f"{pod['metadata']['name']}: {said}"
    )
    warning = await helpers.eventually(
        lambda: _event(api, namespace, "nosecret", "Warning", "CreateContainerConfigError"),
        timeout_s=WITHIN_S,
    )
    assert warning["message"] == stuck["status"]["message"]
    row = control_plane.kubectl("get", "tsess", "nosecret", "-n", namespace, "--no-headers").split()
    assert row[1:4] == ["Provisioning", "False", "CreateContainerConfigError"]

    # the Secret comes: the kubelet builds the container, which starts (nothing here makes it Ready)
    await api.create(_storage_secret())
    assert await kubelets.config_error(api, pod) is None
    await _report(api, pod, _waiting(pod, "gateway", "ContainerCreating", "creating"))
    starting = await helpers.eventually(
        lambda: _reason_is(api, body, "PoolUnavailable"), timeout_s=WITHIN_S, what="the fix"
    )
    assert starting["status"]["phase"] == "Provisioning"


def _storage_secret() -> dict[str, Any]:
    data = {"redis-url": "cmVkaXM6Ly9yOjYzNzkvMA==", "mysql-url": "bXlzcWw6Ly91OnBAbS9l"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": STORAGE_SECRET, "namespace": NAMESPACE},
        "data": data,
    }


async def test_a_session_on_an_unchecked_pool_is_ready_once_registered(
    api: KubeClient, namespace: str
) -> None:
    # the other e2e pool's Deployment is not named to the operator: nothing to read, no wait
    body = helpers.session_body("plain", namespace, placement={"pool": "e2e"})
    await api.create(body)
    ready = await helpers.eventually(lambda: helpers.phase_is(api, body, "Ready"))
    assert ready["status"]["reason"] == "Registered"
