"""The alert rules pass promtool's checks and unit tests, and every alert is tested both ways."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.chart.charts import CHART, REPO, template

RULES = CHART / "rules" / "earshot.rules.yaml"
RULE_TESTS = REPO / "tests" / "chart" / "alerts_test.yaml"


def promtool(*args: str) -> str:
    """Run promtool (Debian package prometheus); its output, or an AssertionError with it."""
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus (tests/helm_setup.sh does)"
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules_passes() -> None:
    out = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names == firing, f"alerts never tested firing: {names - firing}"
    assert names == quiet, f"alerts never tested quiet: {names - quiet}"


def test_every_alert_has_a_severity_and_a_runbook_in_the_operations_guide() -> None:
    guide = (REPO / "docs" / "operations.md").read_text().lower()
    for rule in _alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f"### {rule['alert'].lower()}" in guide, f"no runbook for {rule['alert']}"


@pytest.mark.parametrize("release", ["rel", "earshot"])
def test_the_crash_loop_alert_watches_every_gateway_pod_the_chart_runs(release: str) -> None:
    # A pool's pods carry the chart's names, not the operator's tsess-/troom- prefixes: the
    # alert's pod pattern (anchored, as Prometheus does) must hold theirs and none of the others'.
    [rule] = [a for a in _alerts() if a["alert"] == "EarshotGatewayCrashLooping"]
    found = re.search(r'pod=~"([^"]+)"', rule["expr"])
    assert found
    pattern = re.compile(found.group(1))
    deployments = [m for m in template(release=release) if m["kind"] == "Deployment"]
    pods = {m["metadata"]["name"]: f"{m['metadata']['name']}-6b8f9c-x2k4q" for m in deployments}
    watched = {name for name, pod in pods.items() if pattern.fullmatch(pod)}
    pools = {name for name in pods if name.endswith("-pool-default")}
    assert pools
    assert watched == pools, (pods, watched)
    assert pattern.fullmatch("tsess-call-1-5d9f-abcde")
    assert pattern.fullmatch("troom-r1-5d9f-ab")
