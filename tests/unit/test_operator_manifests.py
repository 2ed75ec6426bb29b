"""Manifest builders: pure functions from a spec and settings to Kubernetes objects."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from earshot_operator import dataplane, gateways, manifests, resources, specs
from earshot_operator.settings import OperatorSettings, SecretKeyRef

SETTINGS = OperatorSettings(gateway_image="registry.local/earshot:test")


def _session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": "call-7", "namespace": "tel", "uid": "u-1", "generation": 3},
        "spec": spec,
    }


def _room(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {"name": "standup", "namespace": "talk", "uid": "u-2", "generation": 1},
        "spec": {
            "roomToken": "r00m",
            "hpbUrl": "wss://hpb.example/spreed",
            "nextcloudUrl": "https://cloud.example",
            "internalSecretRef": {"name": "hpb", "key": "secret"},
            "languages": ["zh", "en"],
            **spec,
        },
    }


def _env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "secretKeyRef" in e["valueFrom"]
    }


def _config_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (
            e["valueFrom"]["configMapKeyRef"]["name"],
            e["valueFrom"]["configMapKeyRef"]["key"],
        )
        for e in container["env"]
        if "configMapKeyRef" in e["valueFrom"]
    }


def test_session_deployment_runs_gateway_and_persister_over_a_shared_spool() -> None:
    gateway = gateways.build(_session(), SETTINGS)
    deployment = manifests.build_deployment(gateway, settings=SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    gateway_container, persister = pod["containers"]
    assert gateway_container["name"] == dataplane.GATEWAY_CONTAINER
    assert gateway_container["command"] == ["earshot", "serve"]
    assert persister["command"] == ["earshot", "persister"]
    assert pod["volumes"] == [{"name": "spool", "emptyDir": {}}]
    for container in (gateway_container, persister):
        assert container["image"] == "registry.local/earshot:test"
        assert container["volumeMounts"] == [{"name": "spool", "mountPath": "/var/spool/earshot"}]
        refs = _config_refs(container)
        assert refs
        assert all(ref == ("tsess-call-7", env) for env, ref in refs.items())
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_session_settings_reach_the_gateway_through_the_configmap() -> None:
    body = _session(audio={"codec": "ulaw", "rate": 16000}, returnTranscription=False)
    gateway = gateways.build(body, SETTINGS)
    data = manifests.build_configmap(gateway)["data"]
    assert data["EARSHOT_AUDIO_CODEC"] == "ulaw"
    assert data["EARSHOT_AUDIO_RATE"] == "16000"
    assert data["EARSHOT_RETURN_TRANSCRIPTION"] == "false"
    assert data["EARSHOT_SESSION_ID"] == "call-7"
    assert data["EARSHOT_PORT"] == "8000"
    assert data["EARSHOT_HOST"] == "0.0.0.0"
    assert data["EARSHOT_TRITON_URL"] == SETTINGS.triton_paraformer_url


def test_session_token_and_storage_urls_come_from_secrets() -> None:
    gateway = gateways.build(_session(), SETTINGS)
    container = manifests.build_deployment(gateway, settings=SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert _env(container) == {
        "EARSHOT_ACCESS_TOKEN": ("tsess-call-7-token", "token"),
        "EARSHOT_PARTIALS_URL": ("earshot-storage", "redis-url"),
        "EARSHOT_SEGMENTS_URL": ("earshot-storage", "mysql-url"),
    }


def test_session_without_auth_gets_no_token_in_its_gateway() -> None:
    gateway = gateways.build(_session(auth="none"), SETTINGS)
    container = manifests.build_deployment(gateway, settings=SETTINGS)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert "EARSHOT_ACCESS_TOKEN" not in _env(container)


def test_storage_overrides_replace_the_settings_secrets() -> None:
    body = _session(storage={"redisUrlSecretRef": {"name": "mine", "key": "r"}})
    gateway = gateways.build(body, SETTINGS)
    assert dict(gateway.secret_env)["EARSHOT_PARTIALS_URL"] == SecretKeyRef(name="mine", key="r")
    assert dict(gateway.secret_env)["EARSHOT_SEGMENTS_URL"] == SETTINGS.mysql_url_secret


def test_every_object_is_owned_by_the_resource() -> None:
    gateway = gateways.build(_session(), SETTINGS)
    built = [
        manifests.build_token_secret(gateway, token="t"),
        manifests.build_configmap(gateway),
        manifests.build_service(gateway, settings=SETTINGS),
        manifests.build_deployment(gateway, settings=SETTINGS),
    ]
    for manifest in built:
        assert manifest["metadata"]["namespace"] == "tel"
        assert manifest["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "earshot.dev/v1alpha1",
                "kind": "TranscriptionSession",
                "name": "call-7",
                "uid": "u-1",
                "controller": True,
            }
        ]
        assert manifest["metadata"]["labels"][resources.MANAGED_BY_LABEL] == "earshot-operator"


@pytest.mark.parametrize("body", [_session(), _room()], ids=["session", "room"])
def test_every_object_and_pod_names_the_operators_release(body: dict[str, Any]) -> None:
    settings = SETTINGS.model_copy(update={"release": "rel"})
    gateway = gateways.build(body, settings)
    deployment = manifests.build_deployment(gateway, settings=settings)
    built = [
        manifests.build_token_secret(gateway, token="t"),
        manifests.build_configmap(gateway),
        manifests.build_service(gateway, settings=settings),
        *manifests.build_access(gateway),
        deployment,
        deployment["spec"]["template"],  # the pods: what the release's PodMonitor selects
    ]
    for manifest in built:
        assert manifest["metadata"]["labels"][resources.RELEASE_LABEL] == "rel"
    without = manifests.build_deployment(gateways.build(body, SETTINGS), settings=SETTINGS)
    assert resources.RELEASE_LABEL not in without["spec"]["template"]["metadata"]["labels"]


def test_token_secret_holds_the_token_base64_encoded() -> None:
    gateway = gateways.build(_session(), SETTINGS)
    secret = manifests.build_token_secret(gateway, token="s3cret")
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret"


def test_service_selects_exactly_the_gateway_pods() -> None:
    gateway = gateways.build(_session(), SETTINGS)
    service = manifests.build_service(gateway, settings=SETTINGS)
    deployment = manifests.build_deployment(gateway, settings=SETTINGS)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 8000


def test_codec_change_changes_the_pod_template() -> None:
    before = manifests.build_deployment(gateways.build(_session(), SETTINGS), settings=SETTINGS)
    after = manifests.build_deployment(
        gateways.build(_session(audio={"codec": "ulaw"}), SETTINGS), settings=SETTINGS
    )
    assert before["spec"]["template"] != after["spec"]["template"]


def test_inactive_session_scales_to_zero() -> None:
    gateway = gateways.build(_session(active=False), SETTINGS)
    assert manifests.build_deployment(gateway, settings=SETTINGS)["spec"]["replicas"] == 0


def test_room_gateway_runs_talk_with_the_room_settings() -> None:
    gateway = gateways.build(_room(), SETTINGS)
    deployment = manifests.build_deployment(gateway, settings=SETTINGS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["earshot", "talk"]
    data = manifests.build_configmap(gateway)["data"]
    assert data["EARSHOT_TALK_ROOM_TOKEN"] == "r00m"
    assert data["EARSHOT_TALK_LANGUAGES"] == "en,zh"
    assert data["EARSHOT_ENGINE"] == "paraformer"  # the default, as the chart's CPU pool
    assert data["EARSHOT_TRITON_URL"] == SETTINGS.triton_paraformer_url
    assert _env(container)["EARSHOT_TALK_INTERNAL_SECRET"] == ("hpb", "secret")
    assert gateway.endpoint == "http://troom-standup.talk.svc:8000"


@pytest.mark.parametrize("body", [_session(), _room()], ids=["session", "room"])
def test_the_persister_gets_only_its_address_the_spool_and_the_stores(body: dict[str, Any]) -> None:
    deployment = manifests.build_deployment(gateways.build(body, SETTINGS), settings=SETTINGS)
    gateway_container, persister = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"] for e in persister["env"]} == {
        "EARSHOT_HOST",
        "EARSHOT_PERSISTER_PORT",
        "EARSHOT_SPOOL_DIR",
        "EARSHOT_PARTIALS_URL",
        "EARSHOT_SEGMENTS_URL",
    }
    gateway_env = {e["name"] for e in gateway_container["env"]}
    assert "EARSHOT_PERSISTER_PORT" not in gateway_env
    assert {"EARSHOT_ACCESS_TOKEN", "EARSHOT_SPOOL_DIR"} <= gateway_env


def test_resource_requests_come_from_the_settings() -> None:
    settings = OperatorSettings.model_validate(
        {"gateway_resources": {"cpu_request": "250m", "memory_request": "1Gi", "cpu_limit": "2"}}
    )
    gateway = gateways.build(_session(), settings)
    container = manifests.build_deployment(gateway, settings=settings)["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"] == {
        "requests": {"cpu": "250m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "512Mi"},
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("call-7", "tsess-call-7"),
        ("a.b.c", "tsess-a-b-c"),
        ("x" * 200, None),
    ],
)
def test_object_names_are_valid_service_names(name: str, expected: str | None) -> None:
    made = gateways.object_name(resources.SESSION, name)
    assert len(made) <= 63
    assert made[0].isalpha()
    assert all(c.isalnum() or c == "-" for c in made)
    if expected is not None:
        assert made == expected


def test_long_names_stay_distinct() -> None:
    first = gateways.object_name(resources.SESSION, "x" * 100 + "a")
    second = gateways.object_name(resources.SESSION, "x" * 100 + "b")
    assert first != second


def test_missing_room_fields_are_a_spec_error() -> None:
    body = _room()
    del body["spec"]["roomToken"]
    with pytest.raises(specs.SpecError, match="roomToken"):
        gateways.build(body, SETTINGS)


def test_probes_use_each_process_health_endpoint() -> None:
    session = manifests.build_deployment(gateways.build(_session(), SETTINGS), settings=SETTINGS)
    room = manifests.build_deployment(gateways.build(_room(), SETTINGS), settings=SETTINGS)
    session_gateway, session_persister = session["spec"]["template"]["spec"]["containers"]
    room_gateway, _ = room["spec"]["template"]["spec"]["containers"]
    assert session_gateway["readinessProbe"]["httpGet"]["path"] == "/health"
    assert room_gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert session_persister["readinessProbe"]["httpGet"] == {
        "path": "/health",
        "port": "persister",
    }
    assert session_persister["ports"][0]["containerPort"] == SETTINGS.persister_port


def test_every_container_has_a_liveness_probe_on_the_endpoint_that_fails_with_it() -> None:
    session = manifests.build_deployment(gateways.build(_session(), SETTINGS), settings=SETTINGS)
    room = manifests.build_deployment(gateways.build(_room(), SETTINGS), settings=SETTINGS)
    probes = {
        (kind, container["name"]): container.get("livenessProbe", {}).get("httpGet")
        for kind, deployment in (("session", session), ("room", room))
        for container in deployment["spec"]["template"]["spec"]["containers"]
    }
    # The endpoints that answer 503 when the process stopped working (g711 /health: spool writer
    # or drainer dead; the persister's /health: drainer stuck; the room gateway's /heartbeat).
    assert probes == {
        ("session", "gateway"): {"path": "/health", "port": "http"},
        ("session", "persister"): {"path": "/health", "port": "persister"},
        ("room", "gateway"): {"path": "/heartbeat", "port": "http"},
        ("room", "persister"): {"path": "/health", "port": "persister"},
    }


def test_every_container_may_take_minutes_to_start_before_its_liveness_probe_counts() -> None:
    # 30 sessions applied at once on a 2-core node: with the liveness probe alone their containers
    # restarted 6 to 12 times and were Ready after 10 minutes; with a startup probe, no restart and
    # Ready after 85 s (bench/reports/cluster_sessions.md).
    session = manifests.build_deployment(gateways.build(_session(), SETTINGS), settings=SETTINGS)
    room = manifests.build_deployment(gateways.build(_room(), SETTINGS), settings=SETTINGS)
    for deployment in (session, room):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            startup, liveness = container["startupProbe"], container["livenessProbe"]
            assert startup["httpGet"] == liveness["httpGet"], container["name"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
            assert "initialDelaySeconds" not in liveness  # the startup probe holds it back
