"""skaffold.yaml stays consistent with the Dockerfiles and the chart (skaffold cannot run here).

Each profile is applied as skaffold applies it (JSON patches over the base config), then every
artifact's context, Dockerfile and target, every image name, the chart path, values files, value
templates, raw manifests and port-forwards are checked against the repository and the chart.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.charts import CHART, REPO, template

SKAFFOLD = REPO / "skaffold.yaml"
CONFIG: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
PROFILES = [p["name"] for p in CONFIG.get("profiles", [])]
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
OUR_IMAGES = {
    "image": VALUES["image"]["repository"],
    "operator.image": VALUES["operator"]["image"]["repository"],
    "triton.cpu.image": VALUES["triton"]["cpu"]["image"]["repository"],
    "triton.gpu.image": VALUES["triton"]["gpu"]["image"]["repository"],
}


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _apply(config: dict[str, Any], patch: dict[str, Any]) -> None:
    *parents, last = _pointer(patch["path"])
    node: Any = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert patch["op"] in ("add", "replace"), patch
    if isinstance(node, list):
        if last == "-":
            node.append(patch["value"])
        else:
            node[int(last)] = patch["value"]
    else:
        assert patch["op"] == "add" or last in node, patch
        node[last] = patch["value"]


def effective(profile: str | None) -> dict[str, Any]:
    """The configuration skaffold runs with ``-p profile`` (None: no profile)."""
    config = copy.deepcopy({k: v for k, v in CONFIG.items() if k != "profiles"})
    for entry in CONFIG.get("profiles", []):
        if entry["name"] == profile:
            for patch in entry.get("patches", []):
                _apply(config, patch)
    return config


CASES = [pytest.param(None, id="base")] + [pytest.param(p, id=p) for p in PROFILES]


def _image_key(image: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def test_skaffold_file_has_the_expected_shape() -> None:
    assert CONFIG["apiVersion"].startswith("skaffold/v4")
    assert CONFIG["kind"] == "Config"
    assert {"cpu-only", "gpu"} <= set(PROFILES)
    assert set(CONFIG) <= {
        "apiVersion",
        "kind",
        "metadata",
        "build",
        "deploy",
        "portForward",
        "profiles",
        "manifests",
    }


@pytest.mark.parametrize("profile", CASES)
def test_every_artifact_builds_from_files_that_exist(profile: str | None) -> None:
    for artifact in effective(profile)["build"]["artifacts"]:
        context = REPO / artifact["context"]
        dockerfile = context / artifact["docker"]["dockerfile"]
        assert context.is_dir(), artifact
        assert dockerfile.is_file(), artifact
        target = artifact["docker"].get("target")
        if target:
            stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
            assert target in stages, f"{dockerfile.name} has no stage {target}: {stages}"


@pytest.mark.parametrize("profile", CASES)
def test_artifact_images_are_the_charts_images(profile: str | None) -> None:
    images = {a["image"] for a in effective(profile)["build"]["artifacts"]}
    assert images <= set(OUR_IMAGES.values())
    expected = set(OUR_IMAGES.values())
    if profile != "gpu":
        expected.discard(OUR_IMAGES["triton.gpu.image"])
    assert images == expected


@pytest.mark.parametrize("profile", CASES)
def test_helm_release_points_at_the_chart_and_its_values(profile: str | None) -> None:
    config = effective(profile)
    artifacts = {_image_key(a["image"]): a["image"] for a in config["build"]["artifacts"]}
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"]).resolve() == CHART
    for path in release.get("valuesFiles", []):
        assert (REPO / path).is_file(), path
    for key, value in release.get("setValueTemplates", {}).items():
        prefix, _, field = key.rpartition(".")
        assert prefix in OUR_IMAGES, key
        assert field in ("repository", "tag"), key
        (variable,) = re.findall(r"\{\{\s*\.IMAGE_(?:REPO|TAG)_(\w+)\s*\}\}", value)
        assert variable in artifacts, f"{key}: no artifact {variable}"
        assert artifacts[variable] == OUR_IMAGES[prefix], key


@pytest.mark.parametrize("profile", CASES)
def test_helm_release_renders_with_skaffolds_values(profile: str | None) -> None:
    config = effective(profile)
    (release,) = config["deploy"]["helm"]["releases"]
    sets = {k: str(v).lower() for k, v in release.get("setValues", {}).items()}
    for key in release.get("setValueTemplates", {}):
        sets[key] = "registry.local/x" if key.endswith("repository") else "dev"
    manifests = template(
        *(REPO / p for p in release.get("valuesFiles", [])),
        sets=sets,
        release=release["name"],
        namespace=release["namespace"],
    )
    services = {m["metadata"]["name"] for m in manifests if m["kind"] == "Service"}
    session = yaml.safe_load((REPO / "docs/samples/transcriptionsession.yaml").read_text())
    operator_made = {f"tsess-{session['metadata']['name']}"}
    for forward in config.get("portForward", []):
        if forward["namespace"] != release["namespace"]:
            continue  # Grafana and Prometheus come from kube-prometheus-stack
        assert forward["resourceName"] in services | operator_made, forward
    for path in config.get("manifests", {}).get("rawYaml", []):
        assert (REPO / path).is_file(), path


def test_gpu_profile_turns_the_gpu_pool_on() -> None:
    (release,) = effective("gpu")["deploy"]["helm"]["releases"]
    values = [yaml.safe_load((REPO / p).read_text()) for p in release["valuesFiles"]]
    assert any(v.get("triton", {}).get("gpu", {}).get("enabled") for v in values)


def test_sample_manifests_are_valid_resources() -> None:
    for path in sorted((REPO / "docs/samples").glob("*.yaml")):
        body = yaml.safe_load(Path(path).read_text())
        assert body["apiVersion"] == "earshot.dev/v1alpha1", path
