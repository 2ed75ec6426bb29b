"""Every Deployment the chart makes probes its containers as the operator probes its gateway pods.

A startup probe gives a container minutes to start before its liveness probe counts (no
initialDelaySeconds to guess), and the liveness probe lets each answer take seconds: on a busy
2-core node Kubernetes' default of 1 s restarts healthy processes. The chart's probes come from one
pair of helpers (earshot.startupProbe, earshot.livenessProbe in templates/_helpers.tpl); these
tests hold them to the operator's (earshot_operator.manifests).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from earshot_operator import gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests.chart.charts import CHART, MONITORING_API, REPO, Manifest, template
from tests.integration.test_session_pod import SESSION

# Every optional Deployment on: the Talk ExApp and both Triton pools.
VALUES = (CHART / "ci" / "talk-values.yaml", CHART / "ci" / "gpu-values.yaml")

# The chart's Deployments (name after the release's prefix) and their containers.
CONTAINERS = {
    ("operator", "operator"),
    ("talk", "talk"),
    ("pool-default", "gateway"),
    ("pool-default", "persister"),
    ("triton-cpu", "triton"),
    ("triton-gpu", "triton"),
}
PREFIX = "rel-earshot-"


def _containers() -> dict[tuple[str, str], dict[str, Any]]:
    rendered: list[Manifest] = template(*VALUES, api_versions=(MONITORING_API,))
    return {
        (deployment["metadata"]["name"].removeprefix(PREFIX), container["name"]): container
        for deployment in rendered
        if deployment["kind"] == "Deployment"
        for container in deployment["spec"]["template"]["spec"]["containers"]
    }


def _timing(probe: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in probe.items() if key != "httpGet"}


@pytest.fixture(scope="module")
def containers() -> dict[tuple[str, str], dict[str, Any]]:
    return _containers()


def test_every_deployment_the_chart_makes_is_checked_here(
    containers: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # a new Deployment (or container) must be added to CONTAINERS, and so to the checks below
    assert set(containers) == CONTAINERS


@pytest.mark.parametrize("where", sorted(CONTAINERS), ids=["/".join(w) for w in sorted(CONTAINERS)])
def test_each_container_may_take_minutes_to_start_and_seconds_to_answer_its_liveness_probe(
    containers: dict[tuple[str, str], dict[str, Any]], where: tuple[str, str]
) -> None:
    container = containers[where]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert startup["httpGet"]["port"] == liveness["httpGet"]["port"]
    assert "initialDelaySeconds" not in liveness  # the startup probe holds it back
    assert liveness["timeoutSeconds"] >= 3  # not the default 1 s, which a busy node misses
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30  # not one slow moment


@pytest.mark.parametrize("where", sorted(CONTAINERS), ids=["/".join(w) for w in sorted(CONTAINERS)])
def test_each_container_is_probed_with_the_timing_of_the_operators_gateway_pods(
    containers: dict[tuple[str, str], dict[str, Any]], where: tuple[str, str]
) -> None:
    settings = OperatorSettings()
    session = manifests.build_deployment(gateways.build(SESSION, settings), settings=settings)
    gateway = session["spec"]["template"]["spec"]["containers"][0]
    container = containers[where]
    assert _timing(container["startupProbe"]) == _timing(gateway["startupProbe"])
    assert _timing(container["livenessProbe"]) == _timing(gateway["livenessProbe"])


@pytest.mark.parametrize(
    ("where", "path"),
    [(("operator", "operator"), "/healthz"), (("talk", "talk"), "/heartbeat")],
)
def test_the_operator_and_the_exapp_start_on_the_endpoint_their_liveness_probe_asks(
    containers: dict[tuple[str, str], dict[str, Any]], where: tuple[str, str], path: str
) -> None:
    container = containers[where]
    assert container["startupProbe"]["httpGet"] == container["livenessProbe"]["httpGet"]
    assert container["livenessProbe"]["httpGet"]["path"] == path


def test_the_operators_plain_manifest_probes_it_as_the_chart_does(
    containers: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # operator/deploy/operator.yaml, for a cluster without Helm
    (deployment,) = [
        doc
        for doc in yaml.safe_load_all((REPO / "operator" / "deploy" / "operator.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
    ]
    (plain,) = deployment["spec"]["template"]["spec"]["containers"]
    charted = containers[("operator", "operator")]
    for probe in ("startupProbe", "livenessProbe"):
        assert plain[probe] == charted[probe], probe
