"""``kubectl describe`` explains a gateway: Normal events per step, Warnings with the pods' cause.

No kubelet runs here: the test writes into a pod's status what a kubelet would report (an image
it cannot pull, a Secret it cannot find, no node that fits) and the operator, watching the pods,
puts that cause into the resource's status and a Warning event within seconds.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane

pytestmark = pytest.mark.asyncio
WITHIN_S = 10.0  # "within seconds"; the Deployment alone would say nothing for 600 s


async def _storage_secret(api: KubeClient, namespace: str) -> None:
    data = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in (("redis-url", "redis://r:6379/0"), ("mysql-url", "mysql://u:p@m/e"))
    }
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "earshot-storage", "namespace": namespace},
            "data": data,
        }
    )


async def _events(api: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    answer = await api.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    items: list[dict[str, Any]] = answer["items"]
    return items


async def _event(
    api: KubeClient, namespace: str, name: str, kind: str, reason: str
) -> dict[str, Any] | None:
    for event in await _events(api, namespace, name):
        if (event["type"], event["reason"]) == (kind, reason):
            return event
    return None


async def _reason_is(api: KubeClient, body: dict[str, Any], reason: str) -> dict[str, Any] | None:
    current = await helpers.resource(api, body)
    return current if ((current or {}).get("status") or {}).get("reason") == reason else None


async def _gateway_pod(api: KubeClient, namespace: str, instance: str) -> dict[str, Any] | None:
    pods = await helpers.list_items(
        api,
        f"/api/v1/namespaces/{namespace}/pods",
        selector=f"app.kubernetes.io/instance={instance}",
    )
    return pods[0] if pods else None


async def _report(api: KubeClient, pod: dict[str, Any], status: dict[str, Any]) -> None:
    meta = pod["metadata"]
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    await api.patch(path, {"status": status})


def _waiting(pod: dict[str, Any], container: str, reason: str, message: str) -> dict[str, Any]:
    statuses = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}}
            if c["name"] == container
            else {"waiting": {"reason": "ContainerCreating"}},
        }
        for c in pod["spec"]["containers"]
    ]
    return {"phase": "Pending", "containerStatuses": statuses}


def _unschedulable(message: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastTransitionTime": now,
    }
    return {"phase": "Pending", "conditions": [condition]}


async def test_a_missing_storage_secret_is_a_warning_and_its_arrival_clears_it(
    api: KubeClient, namespace: str
) -> None:
    body = helpers.session_body("nostore", namespace)
    await api.create(body)
    current = await helpers.eventually(
        lambda: _reason_is(api, body, "SecretMissing"), timeout_s=WITHIN_S, what="SecretMissing"
    )
    assert current["status"]["phase"] == "Provisioning"
    assert current["status"]["message"] == (
        'Secret "earshot-storage" not found (needed for EARSHOT_PARTIALS_URL)'
    )
    warning = await helpers.eventually(
        lambda: _event(api, namespace, "nostore", "Warning", "SecretMissing"),
        timeout_s=WITHIN_S,
        what="the Warning event",
    )
    assert warning["involvedObject"]["kind"] == "TranscriptionSession"
    assert warning["message"] == current["status"]["message"]

    await _storage_secret(api, namespace)
    await helpers.eventually(  # the drift check (2 s here) sees the Secret
        lambda: _reason_is(api, body, "WaitingForPod"), timeout_s=WITHIN_S, what="the cause gone"
    )
    warnings = [e for e in await _events(api, namespace, "nostore") if e["type"] == "Warning"]
    assert len(warnings) == 1  # the drift checks in between repeated nothing


CAUSES = {
    "ImagePullBackOff": (
        "gateway",
        'Back-off pulling image "ghcr.io/earshot-dev/earshot:0.1.0"',
    ),
    "CreateContainerConfigError": ("persister", 'secret "earshot-storage" not found'),
}


@pytest.mark.parametrize("reason", CAUSES)
async def test_a_stuck_container_is_reported_within_seconds(
    api: KubeClient, namespace: str, reason: str, control_plane: ControlPlane
) -> None:
    await _storage_secret(api, namespace)
    body = helpers.session_body("stuck", namespace)
    await api.create(body)
    pod = await helpers.eventually(
        lambda: _gateway_pod(api, namespace, "tsess-stuck"), what="the gateway pod"
    )
    container, message = CAUSES[reason]
    await _report(api, pod, _waiting(pod, container, reason, message))

    current = await helpers.eventually(
        lambda: _reason_is(api, body, reason), timeout_s=WITHIN_S, what=reason
    )
    expected = f"container {container} of pod {pod['metadata']['name']}: {message}"
    assert current["status"]["message"] == expected
    warning = await helpers.eventually(
        lambda: _event(api, namespace, "stuck", "Warning", reason), timeout_s=WITHIN_S
    )
    assert warning["message"] == expected
    described = control_plane.kubectl("describe", "tsess", "stuck", "-n", namespace)
    assert reason in described
    row = control_plane.kubectl("get", "tsess", "stuck", "-n", namespace, "--no-headers").split()
    assert row[1:4] == ["Provisioning", "False", reason]


async def test_an_unschedulable_pod_is_reported_with_the_schedulers_words(
    api: KubeClient, namespace: str
) -> None:
    await _storage_secret(api, namespace)
    body = helpers.session_body("nofit", namespace, engine="kyutai")
    await api.create(body)
    pod = await helpers.eventually(
        lambda: _gateway_pod(api, namespace, "tsess-nofit"), what="the gateway pod"
    )
    words = "0/3 nodes are available: 3 node(s) didn't match node selector."
    await _report(api, pod, _unschedulable(words))

    current = await helpers.eventually(
        lambda: _reason_is(api, body, "Unschedulable"), timeout_s=WITHIN_S, what="Unschedulable"
    )
    assert (
        current["status"]["message"]
        == f"pod {pod['metadata']['name']} cannot be scheduled: {words}"
    )
    await helpers.eventually(
        lambda: _event(api, namespace, "nofit", "Warning", "Unschedulable"), timeout_s=WITHIN_S
    )


async def test_each_step_is_a_normal_event(api: KubeClient, namespace: str) -> None:
    await _storage_secret(api, namespace)
    body = helpers.session_body("steps", namespace)
    await api.create(body)
    created = await helpers.eventually(
        lambda: _event(api, namespace, "steps", "Normal", "Created"), what="Created"
    )
    assert created["message"] == (
        "created ConfigMap/tsess-steps, Deployment/tsess-steps, Secret/tsess-steps-token,"
        " Service/tsess-steps"
    )
    await helpers.eventually(lambda: helpers.make_pods_ready(api, namespace, "tsess-steps"))
    await helpers.eventually(lambda: _event(api, namespace, "steps", "Normal", "Ready"))

    service = path_of("v1", "Service", namespace=namespace, name="tsess-steps")
    await api.delete(service)
    repaired = await helpers.eventually(
        lambda: _event(api, namespace, "steps", "Normal", "DriftRepaired"), what="DriftRepaired"
    )
    assert repaired["message"] == "put back Service/tsess-steps"  # created anew, counted as drift
