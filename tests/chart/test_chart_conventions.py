"""What reviewers check in a chart: security, resources, selectors, defaults, documentation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.charts import (
    CHART,
    CI_VALUES,
    MONITORING_API,
    REPO,
    Manifest,
    containers,
    find,
    template,
    workloads,
)

SELECTOR_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}
EVERYTHING_ON = {
    "triton.gpu.enabled": "true",
    "talk.enabled": "true",
    "networkPolicy.enabled": "true",
    "triton.cpu.autoscaling.enabled": "true",
    "triton.cpu.podDisruptionBudget.enabled": "true",
    "triton.gpu.podDisruptionBudget.enabled": "true",
}


@pytest.fixture(scope="module")
def everything() -> list[Manifest]:
    """Every optional component on, with the monitoring API present."""
    return template(sets=EVERYTHING_ON, api_versions=(MONITORING_API,))


def _selectors(manifest: Manifest) -> list[dict[str, str]]:
    spec = manifest.get("spec") or {}
    found = []
    if manifest["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
        found.append(spec["selector"]["matchLabels"])
    if manifest["kind"] == "Service":
        found.append(spec["selector"])
    if manifest["kind"] in ("ServiceMonitor", "PodMonitor"):
        found.append(spec["selector"]["matchLabels"])
    if manifest["kind"] == "NetworkPolicy":
        found.append(spec["podSelector"]["matchLabels"])
    return found


def test_every_pod_runs_as_non_root_with_a_read_only_root(everything: list[Manifest]) -> None:
    for workload in workloads(everything):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])


def test_no_image_uses_latest_or_no_tag(everything: list[Manifest]) -> None:
    for workload in workloads(everything):
        for container in containers(workload):
            repository, _, tag = container["image"].rpartition(":")
            assert repository, container["image"]
            assert tag not in ("", "latest"), container["image"]


RESOURCE_VALUES = {
    "operator": "operator.resources",
    "triton-cpu": "triton.cpu.resources",
    "triton-gpu": "triton.gpu.resources",
    "talk": "talk.resources",
    "redis": "redis.resources",
    "mysql": "mysql.resources",
}


@pytest.mark.parametrize(("component", "key"), sorted(RESOURCE_VALUES.items()))
def test_resources_are_settable_per_component(component: str, key: str) -> None:
    sets = {
        **EVERYTHING_ON,
        f"{key}.requests.cpu": "1234m",
        f"{key}.limits.memory": "3210Mi",
        f"{key}.limits.ephemeral-storage": "1Gi",
    }
    manifests = template(sets=sets)
    workload = next(
        w
        for w in workloads(manifests)
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == component
    )
    main = workload["spec"]["template"]["spec"]["containers"][0]
    assert main["resources"]["requests"]["cpu"] == "1234m"
    assert main["resources"]["limits"]["memory"] == "3210Mi"
    assert main["resources"]["limits"]["ephemeral-storage"] == "1Gi"


def test_every_container_has_requests_and_a_memory_limit(everything: list[Manifest]) -> None:
    for workload in workloads(everything):
        for container in containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]


def test_gateway_resources_reach_the_operator_settings() -> None:
    manifests = template(sets={"operator.gateway.resources.cpuLimit": "3"})
    env = _operator_env(manifests)
    resources = json.loads(env["EARSHOT_OPERATOR_GATEWAY_RESOURCES"])
    assert resources == {
        "cpu_request": "100m",
        "memory_request": "128Mi",
        "cpu_limit": "3",
        "memory_limit": "512Mi",
    }


def _operator_env(manifests: list[Manifest]) -> dict[str, str]:
    operator = find(manifests, "Deployment", "-operator")
    return {e["name"]: e["value"] for e in containers(operator)[0]["env"] if "value" in e}


def test_selectors_use_only_stable_labels(everything: list[Manifest]) -> None:
    for manifest in everything:
        for selector in _selectors(manifest):
            if manifest["kind"] == "PodMonitor":  # selects the operator's gateway pods
                continue
            assert set(selector) == SELECTOR_LABELS, (manifest["kind"], selector)
            assert "helm.sh/chart" not in selector
            assert "app.kubernetes.io/version" not in selector


def test_selectors_do_not_change_with_versions_or_images(everything: list[Manifest]) -> None:
    changed = template(
        sets={
            **EVERYTHING_ON,
            "image.tag": "9.9.9",
            "operator.image.tag": "9.9.9",
            "triton.cpu.image.tag": "9.9.9",
            "commonLabels.team": "speech",
        },
        api_versions=(MONITORING_API,),
    )

    def by_name(manifests: list[Manifest]) -> dict[tuple[str, str], list[dict[str, str]]]:
        return {(m["kind"], m["metadata"]["name"]): _selectors(m) for m in manifests}

    assert by_name(changed) == by_name(everything)


def test_pod_templates_carry_their_selector_labels(everything: list[Manifest]) -> None:
    for workload in workloads(everything):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]


def test_services_select_their_own_component_and_name_their_ports(
    everything: list[Manifest],
) -> None:
    pods = {
        w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: w
        for w in workloads(everything)
    }
    for service in (m for m in everything if m["kind"] == "Service"):
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        ports = {p["name"] for c in containers(pods[component]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_service_monitors_scrape_named_service_ports(everything: list[Manifest]) -> None:
    services = [m for m in everything if m["kind"] == "Service"]
    for monitor in (m for m in everything if m["kind"] == "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names


def test_gpu_pool_is_off_by_default_and_asks_for_gpus_when_on() -> None:
    default = template()
    components = {
        w["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads(default)
    }
    assert "triton-gpu" not in components
    assert "triton-cpu" in components
    gpu = find(template(sets={"triton.gpu.enabled": "true"}), "Deployment", "-triton-gpu")
    pod = gpu["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "--load-model=kyutai_stt" in pod["containers"][0]["args"]


def test_optional_features_are_off_by_default() -> None:
    kinds = {m["kind"] for m in template()}
    assert not kinds & {"NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # no monitoring API
    assert "talk" not in {
        w["metadata"]["labels"]["app.kubernetes.io/component"] for w in workloads(template())
    }


def test_operator_is_a_single_replica_recreated_never_rolled() -> None:
    operator = find(template(), "Deployment", "-operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_settings_point_at_the_chart_services() -> None:
    manifests = template(sets={"triton.gpu.enabled": "true"})
    env = _operator_env(manifests)
    services = {m["metadata"]["name"] for m in manifests if m["kind"] == "Service"}
    for key in ("EARSHOT_OPERATOR_TRITON_PARAFORMER_URL", "EARSHOT_OPERATOR_TRITON_KYUTAI_URL"):
        host, _, port = env[key].partition(":")
        name, namespace, svc = host.split(".")
        assert (name in services, namespace, svc, port) == (True, "earshot", "svc", "8001")
    secret = find(manifests, "Secret", "-storage")
    for key in ("EARSHOT_OPERATOR_REDIS_URL_SECRET", "EARSHOT_OPERATOR_MYSQL_URL_SECRET"):
        ref = json.loads(env[key])
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["data"]
    assert env["EARSHOT_OPERATOR_GATEWAY_IMAGE"] == "ghcr.io/earshot-dev/earshot:0.1.0"


def test_operator_cluster_role_matches_the_operator_rbac() -> None:
    source = next(
        d
        for d in yaml.safe_load_all((REPO / "operator/deploy/rbac.yaml").read_text())
        if d["kind"] == "ClusterRole"
    )
    role = find(template(), "ClusterRole", "-operator")
    assert role["rules"] == source["rules"]


def test_chart_crds_are_identical_to_the_crds_folder() -> None:
    ours = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    theirs = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert ours == theirs
    for name in theirs:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/earshot/crds/{name} differs from crds/{name}: copy crds/ into the chart"
        )


def test_prometheus_rule_carries_the_rules_file_unchanged(everything: list[Manifest]) -> None:
    rule = find(everything, "PrometheusRule", "-alerts")
    source = yaml.safe_load((CHART / "rules" / "earshot.rules.yaml").read_text())
    assert rule["spec"] == source


def test_dashboard_config_maps_carry_the_generated_json(everything: list[Manifest]) -> None:
    maps = [
        m for m in everything if m["kind"] == "ConfigMap" and "-dashboard-" in m["metadata"]["name"]
    ]
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert len(maps) == len(files) == 4
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((key, text),) = config_map["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())


def test_storage_secret_is_skipped_for_an_existing_one() -> None:
    manifests = template(CHART / "ci" / "production-values.yaml")
    assert not [m for m in manifests if m["kind"] == "Secret"]
    env = _operator_env(manifests)
    assert json.loads(env["EARSHOT_OPERATOR_MYSQL_URL_SECRET"])["name"] == "earshot-storage-prod"


def test_capability_checks_pick_current_api_versions() -> None:
    manifests = template(CHART / "ci" / "gpu-values.yaml", kube_version="1.25.0")
    assert find(manifests, "PodDisruptionBudget", "-triton-gpu")["apiVersion"] == "policy/v1"
    hpa = find(manifests, "HorizontalPodAutoscaler", "-triton-gpu")
    assert hpa["apiVersion"] == "autoscaling/v2"


def test_notes_tell_what_to_apply_next() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kind: TranscriptionSession" in notes
    assert "kind: TalkRoom" in notes


# --- values.yaml: every key documented and described by the schema ---------------------------

KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[\w./-]+|\"[^\"]+\"):")


def _documented_keys() -> list[tuple[tuple[str, ...], bool]]:
    """Every mapping key path of values.yaml (outside lists) and whether a `# --` line precedes it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys: list[tuple[tuple[str, ...], bool]] = []
    stack: list[tuple[int, str]] = []
    list_indent: int | None = None
    previous = ""
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            previous = stripped if stripped else previous
            continue
        indent = len(line) - len(line.lstrip())
        if list_indent is not None and indent >= list_indent:
            previous = stripped
            continue
        list_indent = None
        if stripped.startswith("- "):
            list_indent = indent
            previous = stripped
            continue
        match = KEY.match(line)
        assert match, f"unexpected line in values.yaml: {line!r}"
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"].strip('"')))
        keys.append((tuple(k for _, k in stack), previous.startswith("# --")))
        previous = stripped
    return keys


def test_every_value_is_documented() -> None:
    keys = _documented_keys()
    assert len(keys) > 100
    undocumented = [".".join(path) for path, documented in keys if not documented]
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def _schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in path:
        if node is None:
            return None
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        properties = node.get("properties", {})
        if part in properties:
            node = properties[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("type") == "object" and "additionalProperties" not in node:
            node = {}  # a free-form map (labels, selectors)
        else:
            return None
    return node


def test_every_value_is_in_the_schema_with_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = [".".join(p) for p, _ in _documented_keys() if _schema_node(schema, p) is None]
    assert not missing, f"values missing from values.schema.json: {missing}"
    top = schema["properties"]
    undescribed = [k for k, v in top.items() if not v.get("description")]
    assert not undescribed


def test_schema_rejects_unknown_values() -> None:
    import subprocess

    from tests.chart.charts import helm_binary

    done = subprocess.run(
        [helm_binary(), "template", "rel", str(CHART), "--set", "triton.cpu.replica=2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "Additional property replica is not allowed" in done.stderr


def test_schema_refuses_talk_languages_the_rooms_engine_cannot_recognise() -> None:
    # the rule TalkRooms and the ExApp follow (earshot_operator.dataplane.ENGINE_LANGUAGES)
    import subprocess

    from tests.chart.charts import helm_binary

    def render(*sets: str) -> subprocess.CompletedProcess[str]:
        args = [helm_binary(), "template", "rel", str(CHART), "--set", "talk.enabled=true"]
        for value in sets:
            args += ["--set", value]
        return subprocess.run(args, capture_output=True, text=True, check=False)

    refused = render("talk.languages={en,fr}")
    assert refused.returncode != 0
    assert 'talk.languages.1 must be one of the following: "zh", "en"' in refused.stderr
    assert render("talk.engine=kyutai", "talk.languages={en,fr}").returncode == 0
    assert render("talk.languages={zh,en}").returncode == 0


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.stem)
def test_ci_values_files_are_commented(path: Path) -> None:
    assert path.read_text().startswith("# ")


def test_pod_monitor_selects_the_operators_gateway_pods(everything: list[Manifest]) -> None:
    from earshot_operator import dataplane, resources

    monitor = find(everything, "PodMonitor", "-gateways")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        resources.NAME_LABEL: "earshot-gateway",
        resources.MANAGED_BY_LABEL: resources.MANAGED_BY,
        resources.RELEASE_LABEL: "rel",  # its own release's only (the operator stamps it)
    }
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert ports == {dataplane.PORT_NAME, dataplane.PERSISTER_PORT_NAME}


def _scrapes(manifests: list[Manifest]) -> list[dict[str, Any]]:
    monitors = [m for m in manifests if m["kind"] in ("ServiceMonitor", "PodMonitor")]
    return [
        endpoint
        for monitor in monitors
        for endpoint in monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
    ]


def _added_labels(endpoint: dict[str, Any]) -> dict[str, str]:
    # a replace without source labels sets the target label on every series of the scrape
    return {
        r["targetLabel"]: r["replacement"]
        for r in endpoint.get("relabelings") or ()
        if r.get("action", "replace") == "replace" and not r.get("sourceLabels")
    }


def test_every_scrape_labels_its_series_with_the_release_the_dashboards_choose(
    everything: list[Manifest],
) -> None:
    scrapes = _scrapes(everything)
    # operator, both Triton pools, Talk, the gateway pools (and their persisters), gateways and
    # their persisters
    assert len(scrapes) >= 6
    assert all(_added_labels(endpoint) == {"release": "rel"} for endpoint in scrapes)


def test_a_cluster_value_labels_every_scraped_series_with_it() -> None:
    sets = {**EVERYTHING_ON, "monitoring.serviceMonitor.cluster": "eu-1"}
    scrapes = _scrapes(template(sets=sets, api_versions=(MONITORING_API,)))
    assert scrapes
    assert all(
        _added_labels(endpoint) == {"release": "rel", "cluster": "eu-1"} for endpoint in scrapes
    )
