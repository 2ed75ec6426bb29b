"""The chart's gateway pools, checked from both sides of each contract they are part of.

Chart -> pool gateways: every variable the chart sets in a pool pod is read by the data plane, and
the pod's settings build (the gateway as a pool, the persister as its sidecar). Chart -> operator:
the pools the operator is told of are the pools the chart runs, at their Services' addresses, and
the pool name the operator registers sessions under is the one the pool's gateways follow. The
pool's role is read-only and the HPA scales on the gateway's own metrics.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from earshot import metrics
from earshot.settings import Settings
from earshot_operator import dataplane, gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests.chart.charts import CHART, find, helm_binary, template
from tests.integration.test_session_pod import SESSION
from tests.unit.test_operator_dataplane_contract import SECRET_VALUES, own_variables

STORAGE = {"EARSHOT_PARTIALS_URL": "redis://r:6379/0", "EARSHOT_SEGMENTS_URL": "sqlite:///x.db"}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["value"] if "value" in e else STORAGE.get(e["name"], "")
        for e in container["env"]
    }


def _operator_settings(manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    operator = find(manifests, "Deployment", "-operator")
    for entry in operator["spec"]["template"]["spec"]["containers"][0]["env"]:
        if entry["name"].startswith("EARSHOT_OPERATOR_"):
            monkeypatch.setenv(entry["name"], entry["value"])
    return OperatorSettings()


def test_every_variable_of_a_pool_pod_is_read_and_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = find(template(), "Deployment", "-pool-default")
    commands = {
        c["name"]: tuple(c["command"]) for c in pool["spec"]["template"]["spec"]["containers"]
    }
    containers = {c["name"]: _env(c) for c in pool["spec"]["template"]["spec"]["containers"]}
    for name, env in containers.items():
        assert set(env) - own_variables(commands[name]) == set(), name
        with monkeypatch.context() as patch:
            for variable, value in env.items():
                patch.setenv(variable, value)
            Settings()  # raises if refused
    gateway = containers[dataplane.GATEWAY_CONTAINER]
    assert (gateway["EARSHOT_POOL"], gateway["EARSHOT_PERSISTER"]) == ("default", "sidecar")
    assert set(SECRET_VALUES) >= set(STORAGE)


def test_each_container_of_a_pool_pod_gets_what_the_operators_pods_give_it() -> None:
    pool = find(template(), "Deployment", "-pool-default")
    containers = {c["name"]: set(_env(c)) for c in pool["spec"]["template"]["spec"]["containers"]}
    # the persister exactly its table (tests/unit/test_persister_environment.py: what it reads)
    assert containers[dataplane.PERSISTER_CONTAINER] == dataplane.PERSISTER_ENV
    gateway = containers[dataplane.GATEWAY_CONTAINER]
    assert gateway & dataplane.PERSISTER_ONLY_ENV == set()
    assert dataplane.Env.SPOOL_DIR in gateway


def test_the_operator_is_told_of_each_pool_at_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = template(sets={"pools.gateways.default.port": "9000"})
    settings = _operator_settings(manifests, monkeypatch)
    (pool,) = settings.pools
    service = find(manifests, "Service", "-pool-default")
    host, _, port = pool.address.partition(":")
    assert host == f"{service['metadata']['name']}.earshot.svc"
    assert int(port) == 9000
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "http"] == [9000]
    assert settings.default_placement == "default"
    deployment = find(manifests, "Deployment", "-pool-default")
    gateway = deployment["spec"]["template"]["spec"]["containers"][0]
    # the pool name the operator registers sessions under is the one its gateways follow
    assert _env(gateway)["EARSHOT_POOL"] == pool.name
    assert _env(gateway)["EARSHOT_ENGINE"] == pool.engine
    # the Deployment whose pods say whether the pool can take a stream (docs/pools.md)
    assert pool.deployment_ref == ("earshot", deployment["metadata"]["name"])


def test_a_disabled_pool_is_neither_run_nor_told_of(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = template(
        sets={"pools.gateways.default.enabled": "false", "pools.defaultPlacement": "dedicated"}
    )
    assert not [m for m in manifests if "-pool-" in m["metadata"]["name"]]
    assert _operator_settings(manifests, monkeypatch).pools == ()


def test_a_default_placement_on_no_enabled_pool_fails_the_render() -> None:
    done = subprocess.run(
        [helm_binary(), "template", "rel", str(CHART), "--set", "pools.defaultPlacement=gpu"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert 'pools.defaultPlacement "gpu" is neither dedicated nor an enabled pool' in done.stderr


def test_the_pool_role_only_follows_transcription_sessions() -> None:
    manifests = template()
    role = find(manifests, "ClusterRole", "-pool-default")
    assert role["rules"] == [
        {
            "apiGroups": ["earshot.dev"],
            "resources": ["transcriptionsessions"],
            "verbs": ["list", "watch"],
        }
    ]
    binding = find(manifests, "ClusterRoleBinding", "-pool-default")
    pod = find(manifests, "Deployment", "-pool-default")["spec"]["template"]["spec"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_a_pool_pod_has_time_to_drain() -> None:
    pod = find(template(), "Deployment", "-pool-default")["spec"]["template"]["spec"]
    # streams end within 2 s of reading on plus their last finals; the persister's own
    # shutdown deadline (10 s by default) must fit inside the grace period
    assert pod["terminationGracePeriodSeconds"] > Settings().persister_shutdown_seconds


def test_the_autoscaler_scales_on_active_streams_and_lag_per_pod() -> None:
    manifests = template(sets={"pools.gateways.default.autoscaling.enabled": "true"})
    hpa = find(manifests, "HorizontalPodAutoscaler", "-pool-default")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["earshot_active_streams", "earshot_gateway_lag_seconds"]
    assert metrics.ACTIVE_STREAMS._name == "earshot_active_streams"
    deployment = find(manifests, "Deployment", "-pool-default")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert json.dumps(hpa["spec"]["behavior"]["scaleDown"]["policies"]) == json.dumps(
        [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    )


#: kube-controller-manager's --horizontal-pod-autoscaler-tolerance (its default): the HPA changes the
#: scale only once a metric's ratio to its target is further than this from 1.
HPA_TOLERANCE = 0.1


def test_the_autoscaler_adds_pods_for_lag_before_the_gateways_refuse_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifests = template(sets={"pools.gateways.default.autoscaling.enabled": "true"})
    hpa = find(manifests, "HorizontalPodAutoscaler", "-pool-default")
    (target,) = [
        float(m["pods"]["target"]["averageValue"])
        for m in hpa["spec"]["metrics"]
        if m["pods"]["metric"]["name"] == metrics.GATEWAY_LAG._name
    ]
    pool = find(manifests, "Deployment", "-pool-default")["spec"]["template"]["spec"]
    (gateway,) = [c for c in pool["containers"] if c["name"] == dataplane.GATEWAY_CONTAINER]
    for variable, value in _env(gateway).items():
        monkeypatch.setenv(variable, value)
    # a pool pod refuses new streams past its limit; the HPA adds pods once the pods' average lag
    # passes the target by its tolerance. At a target of the limit, it adds them only once a pod
    # refuses (an average past the limit has a pod past it).
    assert target * (1 + HPA_TOLERANCE) < Settings().max_lag_seconds


def test_a_pool_gateway_is_probed_as_the_operators_gateways_are() -> None:
    # tests/integration/test_liveness.py shows the operator's probe failing on a wedged gateway;
    # a pool pod runs the same two processes, so they must be probed the same way.
    settings = OperatorSettings()
    session = manifests.build_deployment(gateways.build(SESSION, settings), settings=settings)
    operator_made = {c["name"]: c for c in session["spec"]["template"]["spec"]["containers"]}
    pool = find(template(), "Deployment", "-pool-default")
    chart_made = {c["name"]: c for c in pool["spec"]["template"]["spec"]["containers"]}
    assert set(chart_made) == set(operator_made) == {"gateway", "persister"}
    for name, container in chart_made.items():
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe] == operator_made[name][probe], (name, probe)


@pytest.mark.parametrize(("values", "limit"), [("", 0.5), ("maxLagSeconds: 0", 0.0),
                                               ("maxLagSeconds: 1.5", 1.5)])  # fmt: skip
@pytest.mark.parametrize("pool", ["default", "spare"])  # spare: a pool of the user's, no defaults
def test_a_pools_lag_limit_is_what_its_gateways_refuse_by(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: str, limit: float, pool: str
) -> None:
    pool_values = tmp_path / "pool.yaml"
    pool_values.write_text(_pool_values(pool, values))
    deployment = find(template(pool_values), "Deployment", f"-pool-{pool}")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (gateway,) = [c for c in containers if c["name"] == dataplane.GATEWAY_CONTAINER]
    for variable, env_value in _env(gateway).items():
        monkeypatch.setenv(variable, env_value)
    assert Settings().max_lag_seconds == limit


def _pool_values(pool: str, values: str) -> str:
    """A values file setting ``values`` on ``pool``: the chart's default pool, or one the user adds
    with the keys of tests/cluster/test_pool_warnings.py's (none from values.yaml's default)."""
    if pool == "default":
        return f"pools:\n  gateways:\n    default: {{{values}}}\n"
    extra = f", {values}" if values else ""
    return (
        f"pools:\n  gateways:\n    {pool}: {{enabled: true, engine: paraformer, replicas: 1, "
        "maxConnections: 5, port: 8000, persisterPort: 8001, serviceType: ClusterIP, "
        "terminationGracePeriodSeconds: 30, resources: {requests: {cpu: 10m}}, "
        f"persisterResources: {{requests: {{cpu: 10m}}}}, autoscaling: {{enabled: false}}{extra}}}\n"
    )
