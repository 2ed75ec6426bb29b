"""Every PromQL expression in the dashboards and alert rules names a metric that really exists.

The names come from the running services: ``earshot serve`` (the G.711 gateway, configured for
Triton as the operator configures it), ``earshot persister`` and ``earshot talk`` as the images run
them, and the operator's metrics server; plus Triton's own metrics, the contract of
shared/PROTOCOLS.md section 5 (Triton does not run in this test).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from earshot_operator.metrics import MetricsServer, OperatorMetrics
from tests.chart.charts import CHART, REPO
from tests.chart.promql import metric_names

#: Triton's metrics the dashboards and rules may use (PROTOCOLS.md section 5).
TRITON_CONTRACT = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_pending_request_count",
    # Triton's GPU metrics (--allow-gpu-metrics, on by default where a GPU is visible)
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_power_usage",
}
#: What the alert rules read besides earshot and Triton: Prometheus' own scrape health and the
#: kube-state-metrics series that kube-prometheus-stack exports (docs/operations.md, "Alerts").
SCRAPE_CONTRACT = {
    "up",
    "kube_deployment_status_replicas_available",
    "kube_pod_container_status_waiting_reason",
}
EARSHOT = str(Path(sys.executable).with_name("earshot"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{process.args!r} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sample_names(exposition: str) -> set[str]:
    """Every series name an exposition can carry, from its TYPE lines (labelled families
    without children have no samples yet, but their names are fixed by type)."""
    suffixes = {
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
        "counter": ("",),
        "gauge": ("",),
        "untyped": ("",),
        "info": ("",),
    }
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + suffix for suffix in suffixes[kind]}
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
    return names


def _role(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [EARSHOT, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


@dataclass(frozen=True)
class Running:
    """The running roles: metric names per process and each role's base URL."""

    names: dict[str, set[str]]
    urls: dict[str, str]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Metric names per process: gateway, persister, talk and operator, all really running."""
    folder = tmp_path_factory.mktemp("metrics")
    ports = {name: _free_port() for name in ("serve", "persister", "talk", "triton")}
    common = {
        "EARSHOT_CACHE_DIR": str(folder / "cache"),
        "EARSHOT_SPOOL_DIR": str(folder / "spool"),
    }
    roles = {
        # the image's entrypoint and the operator's commands, with the operator's variables
        "serve": (
            ["serve"],
            {
                "EARSHOT_HOST": "127.0.0.1",
                "EARSHOT_PORT": str(ports["serve"]),
                "EARSHOT_TRITON_URL": f"127.0.0.1:{ports['triton']}",
            },
            f"http://127.0.0.1:{ports['serve']}",
            "/health",
        ),
        "persister": (
            ["persister"],
            {"EARSHOT_PERSISTER_PORT": str(ports["persister"])},
            f"http://127.0.0.1:{ports['persister']}",
            "/health",
        ),
        "talk": (
            ["talk"],
            {
                "APP_HOST": "127.0.0.1",
                "APP_PORT": str(ports["talk"]),
                # what the ExApp refuses to start without (the demo model: no weights here)
                "APP_SECRET": "metrics-secret",
                "LT_HPB_URL": "ws://127.0.0.1:9/spreed",
                "LT_INTERNAL_SECRET": "internal",
                "EARSHOT_DEMO_MODEL": "true",
            },
            f"http://127.0.0.1:{ports['talk']}",
            "/heartbeat",
        ),
    }
    processes = []
    try:
        for name, (args, env, _, _) in roles.items():
            processes.append(_role(args, {**common, **env}, folder / f"{name}.log"))
        names = {}
        for process, (name, (_, _, base, health)) in zip(processes, roles.items(), strict=True):
            _get(base + health, process=process)
            names[name] = sample_names(_get(base + "/metrics"))
        names["operator"] = _operator_names()
        yield Running(names, {name: spec[2] for name, spec in roles.items()})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def exported(running: Running) -> dict[str, set[str]]:
    """Metric names per process."""
    return running.names


def _operator_names() -> set[str]:
    import asyncio

    async def scrape() -> str:
        metrics = OperatorMetrics()
        port = _free_port()
        server = MetricsServer(metrics, port=port)
        await server.start()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, _get, f"http://127.0.0.1:{port}/metrics")
        finally:
            await server.stop()

    return sample_names(asyncio.run(scrape()))


def _dashboard_expressions() -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found[f"{where} #{len(found)} {node.get('legendFormat', '')}"] = node["expr"]
            for key, value in node.items():
                walk(value, f"{where}/{node.get('title', key)}" if key == "panels" else where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for path in sorted((CHART / "dashboards").glob("*.json")):
        walk(json.loads(path.read_text()), path.stem)
    return found


def _rule_expressions() -> tuple[dict[str, str], set[str]]:
    groups = yaml.safe_load((CHART / "rules" / "earshot.rules.yaml").read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expressions = {rule.get("alert") or rule["record"]: rule["expr"] for rule in rules}
    return expressions, {rule["record"] for rule in rules if "record" in rule}


def test_every_role_exports_its_metrics(exported: dict[str, set[str]]) -> None:
    assert "earshot_first_partial_latency_seconds_bucket" in exported["serve"]
    assert "earshot_triton_round_trip_seconds_bucket" in exported["serve"]
    assert "earshot_persister_backlog_bytes" in exported["persister"]
    assert "earshot_talk_speakers" in exported["talk"]
    assert "earshot_operator_resources" in exported["operator"]


def test_dashboards_query_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    known = set().union(*exported.values()) | TRITON_CONTRACT
    expressions = _dashboard_expressions()
    assert len(expressions) > 40
    unknown = {
        where: sorted(metric_names(expr) - known)
        for where, expr in expressions.items()
        if metric_names(expr) - known
    }
    assert not unknown, f"dashboard queries name metrics nobody exports: {unknown}"
    assert all(metric_names(expr) for expr in expressions.values())


def test_alert_rules_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    expressions, recorded = _rule_expressions()
    known = set().union(*exported.values()) | TRITON_CONTRACT | SCRAPE_CONTRACT | recorded
    unknown = {
        name: sorted(metric_names(expr) - known)
        for name, expr in expressions.items()
        if metric_names(expr) - known
    }
    assert not unknown, f"rules name metrics nobody exports: {unknown}"


def test_every_dashboard_covers_the_issue_topics() -> None:
    used = set().union(*(metric_names(e) for e in _dashboard_expressions().values()))
    assert {
        "earshot_active_streams",
        "earshot_first_partial_latency_seconds_bucket",
        "earshot_final_latency_seconds_bucket",
        "earshot_real_time_factor_bucket",
        "earshot_overload_rejections_total",
        "earshot_talk_frames_dropped_total",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",
        "earshot_persister_backlog_bytes",
        "earshot_persister_oldest_unacked_age_seconds",
        "earshot_persister_write_seconds_bucket",
        "earshot_persister_retries_total",
        "earshot_operator_resources",
        "earshot_talk_first_caption_latency_seconds_bucket",
        "earshot_talk_final_caption_latency_seconds_bucket",
        "earshot_talk_translations_total",
        "earshot_talk_translation_latency_seconds_bucket",
        "earshot_talk_transcript_finals_total",
    } <= used


def test_promql_tokenizer_finds_metrics_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, engine) (rate(x_bucket{le="1.0",a=~"b"}[5m])))'
        " / on(pod) group_left sum without (job) (y_total offset 5m) > bool 1e6 and z"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z"}


def test_generated_dashboards_are_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(CHART / "dashboards" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _healthcheck(text: str) -> list[str]:
    command: list[str] = json.loads(
        text.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].split("\n")[0]
    )
    return command


def test_image_healthchecks_pass_against_each_running_role(running: Running) -> None:
    dockerfile = (REPO / "services" / "Dockerfile").read_text()
    command = _healthcheck(dockerfile)
    stages = {"g711": "serve", "persister": "persister"}
    for stage, role in stages.items():
        text = dockerfile.split(f"AS {stage}\n", 1)[1].split("FROM ", 1)[0]
        found = re.search(r"EARSHOT_HEALTH_URL=http://127.0.0.1:\d+(/\S+)", text)
        if found is None:  # g711 keeps the runtime stage's default
            found = re.search(r"EARSHOT_HEALTH_URL=http://127.0.0.1:\d+(/\S+)", dockerfile)
        assert found is not None
        env = {**os.environ, "EARSHOT_HEALTH_URL": running.urls[role] + found.group(1)}
        done = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, (stage, done.stderr)


def test_the_talk_image_healthcheck_follows_app_port(running: Running) -> None:
    stage = (REPO / "services" / "Dockerfile").read_text().split("AS talk\n", 1)[1]
    command = _healthcheck(stage.split("FROM ", 1)[0])
    port = urlsplit(running.urls["talk"]).port
    results = {}
    for given in (port, _free_port()):
        env = {**os.environ, "APP_HOST": "0.0.0.0", "APP_PORT": str(given)}
        results[given] = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, text=True, check=False
        )
    assert [done.returncode for done in results.values()] == [0, 1], results
