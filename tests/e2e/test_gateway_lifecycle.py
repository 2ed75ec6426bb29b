"""Both custom resources through their life against a real apiserver and the running operator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind: how to write it, which spec change to make, and what that change sets."""

    kind: str
    prefix: str
    body: Callable[..., dict[str, Any]]
    change: dict[str, Any]
    changed_key: str
    changed_value: str
    endpoint: str
    engine: str


CASES = [
    Case(
        kind="TranscriptionSession",
        prefix="tsess",
        body=helpers.session_body,
        change={"audio": {"codec": "ulaw"}},
        changed_key="EARSHOT_AUDIO_CODEC",
        changed_value="ulaw",
        endpoint="ws://tsess-{name}.{namespace}.svc:8000/ws/transcribe/{name}",
        engine="paraformer",
    ),
    Case(
        kind="TalkRoom",
        prefix="troom",
        body=helpers.room_body,
        # the offered set rolls the pod (sorted); which language is first is followed live
        change={"languages": ["zh", "en"]},
        changed_key="EARSHOT_TALK_LANGUAGES",
        changed_value="en,zh",
        endpoint="http://troom-{name}.{namespace}.svc:8000",
        engine="paraformer",
    ),
]
KINDS = pytest.mark.parametrize("case", CASES, ids=[case.kind for case in CASES])
pytestmark = pytest.mark.asyncio


async def _apply(
    api: KubeClient, case: Case, namespace: str, name: str = "call-1"
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = case.body(name, namespace)
    created = await api.create(body)
    await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Provisioning"), what=f"{case.kind} Provisioning"
    )
    return body, created


@KINDS
async def test_applied_resource_gets_owned_objects_and_reaches_provisioning(
    api: KubeClient, namespace: str, case: Case
) -> None:
    body, created = await _apply(api, case, namespace)
    owned = await helpers.get_owned(
        api, namespace, f"{case.prefix}-call-1", f"{case.prefix}-call-1-token"
    )
    for kind, obj in owned.items():
        assert obj is not None, f"{kind} missing"
        refs = obj["metadata"]["ownerReferences"]
        assert [(r["kind"], r["name"], r["uid"], r["controller"]) for r in refs] == [
            (case.kind, "call-1", created["metadata"]["uid"], True)
        ], kind
    status = (await helpers.resource(api, body) or {})["status"]
    assert status["tokenSecret"] == f"{case.prefix}-call-1-token"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Provisioned": "True",
        "Available": "False",
        "Ready": "False",
    }
    assert "endpoint" not in status


@KINDS
async def test_available_deployment_makes_the_resource_ready_with_its_endpoint(
    api: KubeClient, namespace: str, case: Case, control_plane: ControlPlane
) -> None:
    body, _ = await _apply(api, case, namespace)
    instance = f"{case.prefix}-call-1"
    await helpers.eventually(
        lambda: helpers.make_pods_ready(api, namespace, instance), what="the gateway pod"
    )
    ready = await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Ready"), what=f"{case.kind} Ready"
    )
    status = ready["status"]
    assert status["endpoint"] == case.endpoint.format(name="call-1", namespace=namespace)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    table = control_plane.kubectl("get", case.prefix, "-n", namespace, "call-1")
    header, row = table.splitlines()
    call = ["CALL", "SPEAKERS"] if case.kind == "TalkRoom" else []  # what its gateway reports
    assert header.split() == [
        "NAME",
        "PHASE",
        "READY",
        "REASON",
        "ENGINE",
        *call,
        "ENDPOINT",
        "AGE",
    ]
    assert row.split()[:5] == ["call-1", "Ready", "True", "Available", case.engine]
    assert status["endpoint"] in row.split()


@KINDS
async def test_spec_change_rolls_the_deployment_template(
    api: KubeClient, namespace: str, case: Case
) -> None:
    await _apply(api, case, namespace)
    name = f"{case.prefix}-call-1"
    deployment_path = path_of("apps/v1", "Deployment", namespace=namespace, name=name)
    before = await api.get(deployment_path)
    assert before is not None
    path = path_of(helpers.API_VERSION, case.kind, namespace=namespace, name="call-1")
    await api.patch(path, {"spec": case.change})

    async def rolled() -> dict[str, Any] | None:
        after = await api.get(deployment_path)
        assert after is not None
        return after if after["metadata"]["generation"] > before["metadata"]["generation"] else None

    after = await helpers.eventually(rolled, what="a new Deployment generation")
    annotation = "earshot.dev/config-hash"
    old_hash = before["spec"]["template"]["metadata"]["annotations"][annotation]
    assert after["spec"]["template"]["metadata"]["annotations"][annotation] != old_hash
    configmap = await api.get(path_of("v1", "ConfigMap", namespace=namespace, name=name))
    assert configmap is not None
    assert configmap["data"][case.changed_key] == case.changed_value


@KINDS
async def test_deleted_service_is_recreated_by_the_drift_timer(
    api: KubeClient, namespace: str, case: Case
) -> None:
    body, _ = await _apply(api, case, namespace)
    service_path = path_of("v1", "Service", namespace=namespace, name=f"{case.prefix}-call-1")
    old = await api.get(service_path)
    assert old is not None
    await api.delete(service_path)

    async def recreated() -> dict[str, Any] | None:
        new = await api.get(service_path)
        return new if new is not None and new["metadata"]["uid"] != old["metadata"]["uid"] else None

    new = await helpers.eventually(recreated, what="the Service to come back")
    assert new["metadata"]["ownerReferences"][0]["kind"] == case.kind
    current = await helpers.eventually(
        lambda: _with_drift_repairs(api, body), what="the drift repair to be counted"
    )
    assert current["status"]["counters"]["driftRepairs"] >= 1


async def _with_drift_repairs(api: KubeClient, body: dict[str, Any]) -> dict[str, Any] | None:
    current = await helpers.resource(api, body)
    counters = ((current or {}).get("status") or {}).get("counters") or {}
    return current if counters.get("driftRepairs") else None


@KINDS
async def test_deleted_resource_has_its_objects_garbage_collected(
    api: KubeClient, namespace: str, case: Case
) -> None:
    await _apply(api, case, namespace)
    name = f"{case.prefix}-call-1"
    await api.delete(path_of(helpers.API_VERSION, case.kind, namespace=namespace, name="call-1"))

    async def all_gone() -> bool:
        owned = await helpers.get_owned(api, namespace, name, f"{name}-token")
        return all(obj is None for obj in owned.values())

    await helpers.eventually(all_gone, timeout_s=60, what="the garbage collector")


async def test_ended_session_scales_to_zero_and_completes(api: KubeClient, namespace: str) -> None:
    body, _ = await _apply(api, CASES[0], namespace)
    path = path_of(helpers.API_VERSION, "TranscriptionSession", namespace=namespace, name="call-1")
    await api.patch(path, {"spec": {"active": False}})
    await helpers.eventually(lambda: helpers.phase_is(api, body, "Completed"), what="Completed")
    deployment = await api.get(
        path_of("apps/v1", "Deployment", namespace=namespace, name="tsess-call-1")
    )
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0


async def test_edited_deployment_is_put_back_by_the_drift_timer(
    api: KubeClient, namespace: str
) -> None:
    await _apply(api, CASES[0], namespace)
    path = path_of("apps/v1", "Deployment", namespace=namespace, name="tsess-call-1")
    await api.patch(path, {"spec": {"replicas": 3}})

    async def restored() -> dict[str, Any] | None:
        deployment = await api.get(path)
        return deployment if deployment and deployment["spec"]["replicas"] == 1 else None

    await helpers.eventually(restored, what="replicas back at 1")
