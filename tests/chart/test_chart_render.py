"""The chart lints clean, renders with every values file and validates strictly for 1.25 and 1.33."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chart.charts import CHART, CI_VALUES, MONITORING_API, helm, template

KUBE_VERSIONS = ("1.25.0", "1.33.0")
VALUES_CASES = [pytest.param((), id="defaults")] + [
    pytest.param((path,), id=path.stem) for path in CI_VALUES
]


def test_helm_lint_is_clean() -> None:
    out = helm("lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out, out
    assert "[ERROR]" not in out, out


@pytest.mark.parametrize("values_files", VALUES_CASES)
def test_helm_lint_is_clean_with_each_ci_values_file(values_files: tuple[Path, ...]) -> None:
    args = [arg for path in values_files for arg in ("--values", str(path))]
    out = helm("lint", str(CHART), "--strict", *args)
    assert "[WARNING]" not in out, out
    assert "[ERROR]" not in out, out


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_files", VALUES_CASES)
def test_rendered_manifests_pass_strict_validation(
    values_files: tuple[Path, ...], kube_version: str, tmp_path: Path
) -> None:
    manifests = template(*values_files, kube_version=kube_version, include_crds=True)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(manifests))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            kube_version,
            "--quiet",
            str(rendered),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # a warning means an object kubernetes-validate has no schema for: that is a failure too
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout.strip(), done.stdout
    assert {m["kind"] for m in manifests} >= {"CustomResourceDefinition", "Deployment"}


@pytest.mark.parametrize("values_files", VALUES_CASES)
def test_monitoring_objects_render_when_the_api_exists(values_files: tuple[Path, ...]) -> None:
    manifests = template(*values_files, api_versions=(MONITORING_API,))
    kinds = {m["kind"] for m in manifests}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds


def test_chart_packages_without_the_dashboard_generator(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("earshot-*.tgz")
    done = subprocess.run(["tar", "-tzf", str(package)], capture_output=True, text=True, check=True)
    names = done.stdout.split()
    assert "earshot/dashboards/overview.json" in names
    assert "earshot/values.schema.json" in names
    assert not [n for n in names if n.endswith(".py")]
