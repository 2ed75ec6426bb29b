"""TranscriptionSession fields against the real API server and operator: what the CRD admits is
what the gateway accepts, and each field lands in the gateway's ConfigMap or Deployment."""

from __future__ import annotations

import json
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane, ControlPlaneError


def _dry_run(control_plane: ControlPlane, body: dict[str, Any]) -> dict[str, Any]:
    out = control_plane.kubectl(
        "create", "--dry-run=server", "--validate=false", "-o", "json", "-f", "-",
        stdin=json.dumps(body),
    )  # fmt: skip
    created: dict[str, Any] = json.loads(out)
    return created


def _rejection(control_plane: ControlPlane, body: dict[str, Any]) -> str:
    with pytest.raises(ControlPlaneError) as rejected:
        _dry_run(control_plane, body)
    return str(rejected.value)


@pytest.mark.parametrize("session_id", ["pbx:call-42", "a" * 64, "A.b_c-9"])
def test_session_ids_the_gateway_accepts_are_admitted(
    control_plane: ControlPlane, session_id: str
) -> None:
    body = helpers.session_body("ids", "default", sessionId=session_id)
    assert _dry_run(control_plane, body)["spec"]["sessionId"] == session_id


@pytest.mark.parametrize("session_id", ["a" * 65, "-a", "a/b", "a b"])
def test_session_ids_the_gateway_refuses_are_rejected(
    control_plane: ControlPlane, session_id: str
) -> None:
    body = helpers.session_body("ids", "default", sessionId=session_id)
    assert "spec.sessionId" in _rejection(control_plane, body)


def test_a_user_id_longer_than_its_column_is_rejected(control_plane: ControlPlane) -> None:
    body = helpers.session_body("user", "default", userId="u" * 65)
    message = _rejection(control_plane, body)
    assert "spec.userId" in message
    assert "64" in message


@pytest.mark.parametrize(("engine", "language"), [("paraformer", "fr"), ("kyutai", "zh")])
def test_a_language_the_engine_cannot_recognise_is_rejected(
    control_plane: ControlPlane, engine: str, language: str
) -> None:
    body = helpers.session_body("lang", "default", engine=engine, language=language)
    message = _rejection(control_plane, body)
    # the API server names one field of the failing pair (no CEL on 1.20 for a better message)
    assert "must validate at least one schema (anyOf)" in message
    assert f'spec.engine: Unsupported value: "{engine}"' in message or (
        f'spec.language: Unsupported value: "{language}"' in message
    )


def test_a_language_no_engine_recognises_is_rejected_naming_the_choices(
    control_plane: ControlPlane,
) -> None:
    body = helpers.session_body("lang", "default", engine="kyutai", language="de")
    message = _rejection(control_plane, body)
    assert 'spec.language: Unsupported value: "de"' in message
    assert '"auto", "en", "fr", "zh"' in message


@pytest.mark.parametrize(("engine", "language"), [("paraformer", "zh"), ("kyutai", "fr")])
def test_a_language_the_engine_recognises_is_admitted(
    control_plane: ControlPlane, engine: str, language: str
) -> None:
    body = helpers.session_body("lang", "default", engine=engine, language=language)
    assert _dry_run(control_plane, body)["spec"]["language"] == language


async def test_every_session_field_reaches_the_gateway_the_operator_makes(
    api: KubeClient, namespace: str
) -> None:
    body = helpers.session_body(
        "fields",
        namespace,
        sessionId="pbx:call-7",
        userId="bob",
        engine="kyutai",
        language="fr",
        idleTimeoutSeconds=30,
        auth="none",
    )
    await api.create(body)

    async def configmap() -> dict[str, Any] | None:
        return await api.get(path_of("v1", "ConfigMap", namespace=namespace, name="tsess-fields"))

    data = (await helpers.eventually(configmap, what="the gateway's ConfigMap"))["data"]
    assert {key: data[key] for key in data if key in WANTED} == WANTED
    deployment = await api.get(
        path_of("apps/v1", "Deployment", namespace=namespace, name="tsess-fields")
    )
    assert deployment is not None
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        # auth none: no token reaches the pod
        assert "EARSHOT_ACCESS_TOKEN" not in {e["name"] for e in container["env"]}
    ready = await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Provisioning"), what="Provisioning"
    )
    assert ready["status"]["phase"] == "Provisioning"


WANTED = {
    "EARSHOT_SESSION_ID": "pbx:call-7",
    "EARSHOT_USER_ID": "bob",
    "EARSHOT_ENGINE": "kyutai",
    "EARSHOT_LANGUAGE": "fr",
    "EARSHOT_IDLE_TIMEOUT_SECONDS": "30",
    "EARSHOT_AUTH": "none",
}


async def test_a_resource_name_that_is_no_session_id_fails_with_the_reason_in_its_status(
    api: KubeClient, namespace: str
) -> None:
    name = "a" * 70  # a valid resource name, but sessions.id holds 64 characters
    body = helpers.session_body(name, namespace)
    await api.create(body)
    failed = await helpers.eventually(lambda: helpers.phase_is(api, body, "Failed"), what="Failed")
    status = failed["status"]
    assert "from the resource name (spec.sessionId is unset)" in status["message"]
    assert "set spec.sessionId" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "InvalidSpec"
    deployment = await api.get(
        path_of("apps/v1", "Deployment", namespace=namespace, name=f"tsess-{name}")
    )
    assert deployment is None
