"""A session reached from outside the cluster: the operator's Ingress rule and external endpoint,
against a real apiserver (networking.k8s.io/v1), with the operator's least-privilege role."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane
from tests.e2e.controlplane.operators import OperatorProcess, operator_kubeconfig

pytestmark = pytest.mark.asyncio
INGRESS_ENV = {
    "EARSHOT_OPERATOR_GATEWAY_INGRESS_HOST": "stt.example.com",
    "EARSHOT_OPERATOR_GATEWAY_INGRESS_CLASS": "nginx",
    "EARSHOT_OPERATOR_GATEWAY_INGRESS_TLS_SECRET": "stt-tls",
    "EARSHOT_OPERATOR_GATEWAY_INGRESS_ANNOTATIONS": '{"cert-manager.io/cluster-issuer": "le"}',
}


@pytest.fixture
def ingress_operator(
    control_plane: ControlPlane, operator_process: OperatorProcess
) -> Iterator[OperatorProcess]:
    """The shared operator stopped, and one given an Ingress host in its place."""
    operator_process.stop()
    log = control_plane.folder / "ingress-operator.log"
    process = OperatorProcess(operator_kubeconfig(control_plane), log=log)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in INGRESS_ENV.items():
            patch.setenv(name, value)
        process.start()
    try:
        yield process
    finally:
        process.stop()
        operator_process.start()
    assert "Forbidden" not in log.read_text()


async def test_a_session_gets_an_ingress_rule_and_an_external_endpoint(
    api: KubeClient, namespace: str, ingress_operator: OperatorProcess
) -> None:
    body = helpers.session_body("outside", namespace)
    await api.create(body)
    path = path_of("networking.k8s.io/v1", "Ingress", namespace=namespace, name="tsess-outside")

    async def ingress() -> dict[str, Any] | None:
        return await api.get(path)

    made = await helpers.eventually(ingress, what="the Ingress")
    [rule] = made["spec"]["rules"]
    assert rule["host"] == "stt.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/ws/transcribe/outside",
            "pathType": "Exact",
            "backend": {"service": {"name": "tsess-outside", "port": {"name": "http"}}},
        }
    ]
    assert made["spec"]["ingressClassName"] == "nginx"
    assert made["spec"]["tls"] == [{"hosts": ["stt.example.com"], "secretName": "stt-tls"}]
    assert made["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "le"}
    assert made["metadata"]["ownerReferences"][0]["name"] == "outside"

    await helpers.eventually(lambda: helpers.make_pods_ready(api, namespace, "tsess-outside"))
    ready = await helpers.eventually(lambda: helpers.phase_is(api, body, "Ready"), what="Ready")
    assert ready["status"]["externalEndpoint"] == "wss://stt.example.com/ws/transcribe/outside"

    await api.patch(path, {"spec": {"rules": [{**rule, "host": "elsewhere.example.com"}]}})

    async def put_back() -> dict[str, Any] | None:
        current = await api.get(path)
        return current if current and current["spec"]["rules"][0]["host"] == rule["host"] else None

    await helpers.eventually(put_back, what="the drift check to put the rule back")
