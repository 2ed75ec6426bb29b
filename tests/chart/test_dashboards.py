"""The generated dashboards: scoped to a cluster, namespace, release and pod, SLOs drawn, GPU
panels, linked, and every query valid PromQL (promtool parses each as a recording rule)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.charts import CHART
from tests.chart.promql import metric_names

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
IDS = [path.stem for path in DASHBOARDS]
#: The labels every dashboard is narrowed by, in the order they narrow each other.
SCOPES = ("cluster", "namespace", "release", "pod")


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in board["panels"] if panel.get("type") != "row"]


def _exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in _panels(board) for t in panel.get("targets") or ()]


@pytest.mark.parametrize("path", DASHBOARDS, ids=IDS)
def test_every_dashboard_chooses_data_source_cluster_namespace_release_and_pod(path: Path) -> None:
    board = _load(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", *SCOPES]
    for index, name in enumerate(SCOPES):
        variable = variables[name]
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["allValue"] == ".*"  # also matches a series without the label
        assert variable["query"].startswith("label_values({")
        assert variable["query"].endswith(f"}}, {name})")
        for before in SCOPES[:index]:  # narrowed by the choices made before it
            assert f'{before}=~"${before}"' in variable["query"], variable["query"]
        for after in SCOPES[index:]:
            assert f"${after}" not in variable["query"], variable["query"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=IDS)
def test_every_metric_of_every_query_is_narrowed_to_every_chosen_scope(path: Path) -> None:
    for expr in _exprs(_load(path)):
        for name in metric_names(expr):
            selectors = re.findall(rf"\b{name}\{{([^}}]*)\}}", expr)
            occurrences = re.findall(rf"\b{name}\b", expr)
            assert len(selectors) == len(occurrences), expr
            for selector in selectors:
                for scope in SCOPES:
                    assert f'{scope}=~"${scope}"' in selector, expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=IDS)
def test_every_dashboard_links_to_the_others_by_tag(path: Path) -> None:
    board = _load(path)
    assert "earshot" in board["tags"]
    [link] = board["links"]
    assert (link["type"], link["tags"], link["includeVars"]) == ("dashboards", ["earshot"], True)


def test_the_latency_panels_draw_their_slo() -> None:
    panels = {p["title"]: p for p in _panels(_load(CHART / "dashboards" / "overview.json"))}
    drawn = {}
    for title, panel in panels.items():
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
            drawn[title] = [s["value"] for s in defaults["thresholds"]["steps"]]
    # The latency SLOs, and the inference load above which a gateway refuses new streams.
    assert sorted(drawn.values()) == [[None, 0.9], [None, 1.0], [None, 3.0]]
    assert drawn.pop("Inference load (in-process engine)") == [None, 0.9]
    assert all(
        "latency" in title.lower() or "partial" in title.lower() or "final" in title.lower()
        for title in drawn
    )


def test_the_triton_dashboard_shows_the_gpus() -> None:
    used = set().union(*map(metric_names, _exprs(_load(CHART / "dashboards" / "triton.json"))))
    assert {"nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage"} <= used


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": functools.reduce(lambda e, s: e.replace(f"${s}", ".*"), SCOPES, expr),
        }
        for index, expr in enumerate(e for path in DASHBOARDS for e in _exprs(_load(path)))
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
