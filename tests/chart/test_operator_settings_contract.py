"""The chart and the operator meet in the operator's environment: checked from both sides.

From the chart's side: every ``EARSHOT_OPERATOR_*`` variable the chart sets is a setting the
operator reads, and parses. From the operator's side: the chart's scheduling, pull-secret,
priority and Service values reach the gateway pods and Services the operator makes, and the pool
gateway pods the chart renders are scheduled, pulled and prioritised like them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from earshot_operator import gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests.chart.charts import CHART, MONITORING_API, find, template

PREFIX = "EARSHOT_OPERATOR_"
SESSION = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TranscriptionSession",
    "metadata": {"name": "call-7", "namespace": "tel", "uid": "u-1"},
    "spec": {"userId": "alice"},
}
PLACEMENT_VALUES = {
    "imagePullSecrets[0].name": "regcred",
    "imagePullSecrets[1].name": "mirror",
    "operator.gateway.nodeSelector.pool": "gateways",
    "operator.gateway.tolerations[0].key": "dedicated",
    "operator.gateway.tolerations[0].operator": "Equal",
    "operator.gateway.tolerations[0].value": "earshot",
    "operator.gateway.tolerations[0].effect": "NoSchedule",
    "operator.gateway.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution"
    "[0].weight": "10",
    "operator.gateway.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution"
    "[0].podAffinityTerm.topologyKey": "kubernetes.io/hostname",
    "operator.gateway.priorityClassName": "earshot-gateways",
    "operator.gateway.serviceType": "NodePort",
}


def _operator_env(sets: dict[str, str] | None = None) -> dict[str, str]:
    deployment = find(template(sets=sets), "Deployment", "-operator")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if e["name"].startswith(PREFIX)}


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorSettings()


def test_every_variable_the_chart_sets_is_an_operator_setting() -> None:
    fields = {PREFIX + name.upper() for name in OperatorSettings.model_fields}
    assert set(_operator_env()) - fields == set()


def test_chart_defaults_give_pods_without_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(_operator_env(), monkeypatch)
    spec = _pod_spec(settings)
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert key not in spec
    gateway = gateways.build(SESSION, settings)
    service = manifests.build_service(gateway, settings=settings)
    assert service["spec"]["type"] == "ClusterIP"
    assert manifests.build_ingress(gateway, settings=settings) is None
    assert gateway.external_endpoint is None


def test_chart_placement_values_reach_the_gateway_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(_operator_env(PLACEMENT_VALUES), monkeypatch)
    spec = _pod_spec(settings)
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert spec["nodeSelector"] == {"pool": "gateways"}
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "earshot", "effect": "NoSchedule"}
    ]
    preferred = spec["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred == [
        {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
    ]
    assert spec["priorityClassName"] == "earshot-gateways"
    service = manifests.build_service(gateways.build(SESSION, settings), settings=settings)
    assert service["spec"]["type"] == "NodePort"


SCHEDULING = ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "priorityClassName")


def test_a_pool_pod_is_scheduled_and_pulled_like_the_operators_gateway_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pool gateways are gateways: the chart's scheduling values and priority reach them too
    rendered = template(sets=PLACEMENT_VALUES)
    pool = find(rendered, "Deployment", "-pool-default")["spec"]["template"]["spec"]
    operators = _pod_spec(_settings(_operator_env(PLACEMENT_VALUES), monkeypatch))
    for key in SCHEDULING:
        assert pool[key] == operators[key], key


def test_a_pools_own_scheduling_values_win_over_the_gateway_defaults() -> None:
    own = {
        "pools.gateways.default.nodeSelector.tier": "pool",
        "pools.gateways.default.tolerations[0].key": "pool",
        "pools.gateways.default.tolerations[0].operator": "Exists",
        "pools.gateways.default.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuring"
        "Execution[0].weight": "5",
        "pools.gateways.default.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuring"
        "Execution[0].preference.matchExpressions[0].key": "tier",
        "pools.gateways.default.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuring"
        "Execution[0].preference.matchExpressions[0].operator": "Exists",
        "pools.gateways.default.priorityClassName": "earshot-pools",
    }
    pool = find(template(sets={**PLACEMENT_VALUES, **own}), "Deployment", "-pool-default")
    spec = pool["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"tier": "pool"}
    assert spec["tolerations"] == [{"key": "pool", "operator": "Exists"}]
    assert list(spec["affinity"]) == ["nodeAffinity"]
    assert spec["priorityClassName"] == "earshot-pools"


#: What a pool may set for itself (imagePullSecrets are the release's).
POOL_SCHEDULING = ("nodeSelector", "tolerations", "affinity", "priorityClassName")


def _pool_values(path: Path, pool: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"pools": {"gateways": {"default": pool}}}))
    return path


def _pool_spec(*values_files: Path) -> dict[str, Any]:
    pool = find(template(*values_files, sets=PLACEMENT_VALUES), "Deployment", "-pool-default")
    spec: dict[str, Any] = pool["spec"]["template"]["spec"]
    return spec


def test_a_pools_empty_scheduling_values_mean_none_not_the_gateway_defaults(tmp_path: Path) -> None:
    empty = {"nodeSelector": {}, "tolerations": [], "affinity": {}, "priorityClassName": ""}
    spec = _pool_spec(_pool_values(tmp_path / "none.yaml", empty))
    assert not set(POOL_SCHEDULING) & set(spec)
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_a_pools_null_scheduling_values_take_the_gateway_defaults(tmp_path: Path) -> None:
    own = {
        "nodeSelector": {"tier": "pool"},
        "tolerations": [{"key": "pool", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {}},
        "priorityClassName": "earshot-pools",
    }
    earlier = _pool_values(tmp_path / "own.yaml", own)
    later = _pool_values(tmp_path / "inherit.yaml", dict.fromkeys(POOL_SCHEDULING))
    spec = _pool_spec(earlier, later)
    assert spec["nodeSelector"] == {"pool": "gateways"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert list(spec["affinity"]) == ["podAntiAffinity"]
    assert spec["priorityClassName"] == "earshot-gateways"


def test_a_later_values_files_empty_map_keeps_an_earlier_files_keys(tmp_path: Path) -> None:
    # Helm merges maps: the limitation values.yaml documents, and what a later file can do
    earlier = _pool_values(tmp_path / "own.yaml", {"nodeSelector": {"tier": "pool"}})
    empty = _pool_values(tmp_path / "empty.yaml", {"nodeSelector": {}})
    assert _pool_spec(earlier, empty)["nodeSelector"] == {"tier": "pool"}
    inherit = _pool_values(tmp_path / "inherit.yaml", {"nodeSelector": None})
    assert _pool_spec(earlier, inherit)["nodeSelector"] == {"pool": "gateways"}


def test_chart_defaults_give_pool_pods_without_placement() -> None:
    spec = find(template(), "Deployment", "-pool-default")["spec"]["template"]["spec"]
    assert not set(SCHEDULING) & set(spec)


def _pod_spec(settings: OperatorSettings) -> dict[str, Any]:
    deployment = manifests.build_deployment(gateways.build(SESSION, settings), settings=settings)
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_a_talkroom_defaults_to_the_engine_the_default_chart_serves() -> None:
    crd = yaml.safe_load((CHART / "crds" / "talkrooms.earshot.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    crd_default = schema["properties"]["spec"]["properties"]["engine"]["default"]
    room = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {"name": "standup", "namespace": "talk", "uid": "u-2"},
        "spec": {
            "roomToken": "r00m",
            "hpbUrl": "wss://hpb.example/spreed",
            "nextcloudUrl": "https://cloud.example",
            "internalSecretRef": {"name": "hpb"},
        },
    }
    operator_default = gateways.build(room, OperatorSettings()).engine
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    served = {
        engine
        for engine, pool in (("paraformer", "cpu"), ("kyutai", "gpu"))
        if values["triton"][pool]["enabled"]
    }
    assert crd_default == operator_default == values["talk"]["engine"]
    assert served == {crd_default}


INGRESS_VALUES = {
    "operator.gateway.ingress.host": "stt.example.com",
    "operator.gateway.ingress.className": "nginx",
    "operator.gateway.ingress.tlsSecret": "stt-tls",
    "operator.gateway.ingress.annotations.cert-manager\\.io/cluster-issuer": "letsencrypt",
}


def test_chart_ingress_values_give_each_session_an_ingress_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(_operator_env(INGRESS_VALUES), monkeypatch)
    gateway = gateways.build(SESSION, settings)
    ingress = manifests.build_ingress(gateway, settings=settings)
    assert ingress is not None
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["metadata"]["ownerReferences"][0]["kind"] == "TranscriptionSession"
    assert ingress["spec"] == {
        "ingressClassName": "nginx",
        "tls": [{"hosts": ["stt.example.com"], "secretName": "stt-tls"}],
        "rules": [
            {
                "host": "stt.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/ws/transcribe/call-7",
                            "pathType": "Exact",
                            "backend": {
                                "service": {"name": "tsess-call-7", "port": {"name": "http"}}
                            },
                        }
                    ]
                },
            }
        ],
    }
    assert gateway.external_endpoint == "wss://stt.example.com/ws/transcribe/call-7"


@pytest.mark.parametrize("timeout", ["120", "600"])
def test_the_uninstall_hook_waits_the_charts_timeout_within_its_jobs_deadline(
    timeout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = find(template(sets={"uninstall.timeoutSeconds": timeout}), "Job", "-uninstall")
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    fields = {PREFIX + name.upper() for name in OperatorSettings.model_fields}
    assert set(env) <= fields
    settings = _settings(env, monkeypatch)
    assert settings.uninstall_timeout_seconds == float(timeout)
    # the hook must outlive its wait to say what is left
    assert job["spec"]["activeDeadlineSeconds"] == int(timeout) + 60


#: What ``helm uninstall`` waits for a hook without ``--timeout``: 5m.
HELM_DEFAULT_TIMEOUT_S = 300


def test_the_uninstall_hook_fits_helms_default_timeout_by_default() -> None:
    # helm stops waiting for a hook after its --timeout: with the chart's defaults the hook's Job
    # reaches its own verdict (and its deadline) before helm would give up on it
    job = find(template(), "Job", "-uninstall")
    assert job["spec"]["activeDeadlineSeconds"] <= HELM_DEFAULT_TIMEOUT_S


def test_the_uninstall_timeout_defaults_agree_between_chart_and_operator() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    default = OperatorSettings.model_fields["uninstall_timeout_seconds"].default
    assert values["uninstall"]["timeoutSeconds"] == default


def _gateway_pod_labels(release: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The labels of a gateway pod made by the operator of ``release``, as its chart runs it."""
    with monkeypatch.context() as patch:
        env = {e["name"]: e["value"] for e in _env_of(template(release=release))}
        settings = _settings(env, patch)
    deployment = manifests.build_deployment(gateways.build(SESSION, settings), settings=settings)
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _env_of(rendered: list[dict[str, Any]]) -> list[dict[str, str]]:
    [container] = find(rendered, "Deployment", "-operator")["spec"]["template"]["spec"][
        "containers"
    ]
    return [e for e in container["env"] if e["name"].startswith(PREFIX)]


@pytest.mark.parametrize("watch", [None, "tel"])
def test_a_releases_pod_monitor_selects_its_own_gateway_pods_only(
    watch: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two releases in one cluster: their PodMonitors stamp `release` on what they select, so each
    # must select its own operator's pods, also when it watches every namespace.
    sets = {"operator.watchNamespaces[0]": watch} if watch else None
    rendered = template(sets=sets, api_versions=(MONITORING_API,), release="rel")
    selector = find(rendered, "PodMonitor", "-gateways")["spec"]["selector"]["matchLabels"]
    own = _gateway_pod_labels("rel", monkeypatch)
    other = _gateway_pod_labels("other", monkeypatch)
    assert selector.items() <= own.items()
    assert not selector.items() <= other.items()
