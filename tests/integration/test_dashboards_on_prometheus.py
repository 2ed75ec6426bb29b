"""Every panel query of every dashboard, asked of a real Prometheus that scraped real earshot pods.

Grafana is AGPL and is not run here. What stands in for it is what a panel needs from Grafana: each
variable's ``label_values()`` query is answered by Prometheus, every value it offers is chosen and
substituted into each target's expression the way Grafana's Prometheus data source does (one value
regex-escaped, several as ``(a|b)``), and the range query Grafana would send is sent. A query
"returns data" when a series of the answer has a sample that is a number (Grafana draws NaN as a
gap). Not shown: that Grafana lays out and draws the panels.

The scraped processes stand for the pods of one release: a pool pod whose gateway recognises in
process (Paraformer), with its persister sidecar; a pool pod recognising with the in-process,
clocked Kyutai engine (its batching panels); a pool pod whose gateway recognises over Triton; the
Triton server (CPU, so no GPU series); the Talk ExApp without a call. Prometheus gives them the labels the
Prometheus operator's Kubernetes discovery gives a pod (``namespace``, ``pod``, ``container``) and
the chart's own relabelings (``release``, ``cluster``), rendered from the chart. One telephone
stream goes through each gateway before the queries, and one client sends a text frame (a protocol
error).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from earshot.engines import paraformer, tiny_kyutai
from earshot.gateways.g711 import client
from tests import triton_server
from tests.chart import charts
from tests.gateway import session_url, until_closed
from tests.persister import speech_frames
from tests.servers import EarshotProcess, PrometheusServer, ServerUnavailableError, free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

DASHBOARDS = sorted((charts.CHART / "dashboards").glob("*.json"))
CLUSTER, NAMESPACE, RELEASE = "test-cluster", "earshot", "rel"
IN_PROCESS_POD, TRITON_POOL_POD = "earshot-pool-cpu-6d5f9-x2kqp", "earshot-pool-triton-7c8d4-p9wzl"
KYUTAI_POD = "earshot-pool-kyutai-5f6b7-r8hnd"
TRITON_POD, TALK_POD = "rel-earshot-triton-cpu-0", "rel-earshot-talk-5b7c6-m4tqs"
SCRAPE_SECONDS = 1

NO_OPERATOR = "needs the operator, which needs a kube-apiserver (tests/e2e); not started here"
NO_GPU = "Triton runs on the CPU here (--allow-gpu-metrics false): no nv_gpu_* series"
NO_CALL = (
    "the Talk ExApp has no call (that needs the HPB stack: tests/integration/test_talk_hpb.py), "
    "so its latency histograms are all zero and every quantile is NaN"
)
#: The panels whose series cannot exist in this setup, and why. The test fails when one of them
#: returns data (then it belongs off this list) and when any other panel's query returns none.
ABSENT = {
    ("operator", "Resources by phase"): NO_OPERATOR,
    ("operator", "Failed resources (reconcile errors)"): NO_OPERATOR,
    ("operator", "Reconcile duration"): NO_OPERATOR,
    ("operator", "Reconciles per second"): NO_OPERATOR,
    ("triton", "GPU utilisation"): NO_GPU,
    ("triton", "GPU memory used"): NO_GPU,
    ("triton", "GPU power"): NO_GPU,
    ("overview", "Talk: audio to first caption"): NO_CALL,
    ("overview", "Talk: audio to final caption"): NO_CALL,
    ("overview", "Talk: caption to translation"): NO_CALL,
}
_LABEL_VALUES = re.compile(r"label_values\((\{.*\}), (\w+)\)")
_REGEX_SPECIALS = re.compile(r"([\\^$.|?*+()\[\]{}])")


@dataclass(frozen=True)
class Target:
    """One query of one panel."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str


def _targets() -> list[Target]:
    targets = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = [p for p in board["panels"] if p.get("type") != "row"]
        titles = [p["title"] for p in panels]
        assert len(set(titles)) == len(titles), f"{path.name}: panel titles repeat"
        targets += [
            Target(path.stem, panel["title"], t["refId"], t["expr"])
            for panel in panels
            for t in panel.get("targets") or ()
        ]
    return targets


def grafana_value(values: list[str]) -> str:
    """What Grafana's Prometheus data source puts in a regex matcher for the chosen ``values``."""
    escaped = [_REGEX_SPECIALS.sub(r"\\\\\1", value) for value in values]
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def substituted(text: str, chosen: dict[str, str]) -> str:
    """``text`` with each ``$name`` replaced by the chosen value."""
    for name, value in chosen.items():
        text = text.replace(f"${name}", value)
    assert "$" not in text, f"a variable left unsubstituted: {text}"
    return text


def _pod_relabelings() -> list[dict[str, Any]]:
    """What the Prometheus operator makes of a PodMonitor endpoint: its Kubernetes labels, then the
    chart's relabelings (rendered from the chart, in Prometheus's snake_case)."""
    manifests = charts.template(
        sets={"monitoring.serviceMonitor.cluster": CLUSTER},
        api_versions=(charts.MONITORING_API,),
        release=RELEASE,
        namespace=NAMESPACE,
    )
    [endpoint, *_] = charts.find(manifests, "PodMonitor")["spec"]["podMetricsEndpoints"]
    chart = [
        {re.sub(r"([A-Z])", r"_\1", key).lower(): value for key, value in rule.items()}
        for rule in endpoint["relabelings"]
    ]
    kubernetes = [
        {"source_labels": [f"__meta_kubernetes_{meta}"], "target_label": label}
        for meta, label in (
            ("namespace", "namespace"),
            ("pod_name", "pod"),
            ("pod_container_name", "container"),
        )
    ]
    return kubernetes + chart


def _scrape_config(targets: dict[str, tuple[str, str, int]]) -> dict[str, Any]:
    """One job; each target (``name: (pod, container, port)``) labelled as discovery would."""
    static = [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {
                "__meta_kubernetes_namespace": NAMESPACE,
                "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_container_name": container,
            },
        }
        for pod, container, port in targets.values()
    ]
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": f"{NAMESPACE}/{RELEASE}-earshot-gateways",
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "static_configs": static,
                "relabel_configs": _pod_relabelings(),
            }
        ],
    }


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[triton_server.TritonServer]:
    """The Triton pool's server, serving the tiny Paraformer; failing (never skipping)."""
    workdir = tmp_path_factory.mktemp("triton-dashboards")
    files = paraformer.cached_tiny_paraformer(workdir / "cache")
    spec = triton_server.ModelSpec("paraformer_streaming", {"model_dir": str(files.encoder.parent)})
    with triton_server.serving(workdir, [spec]) as server:
        yield server


@dataclass(frozen=True)
class Pods:
    """The running processes, by scrape target name, and the gateways' WebSocket bases."""

    ports: dict[str, tuple[str, str, int]]
    gateways: list[str]


@pytest.fixture
def pods(
    tmp_path: Path,
    tiny_model_cache: Path,
    redis_url: str,
    mysql_url: str,
    triton: triton_server.TritonServer,
) -> Iterator[Pods]:
    """The pool pods and the Talk ExApp, started; stopped when the test ends."""
    common = {
        "EARSHOT_HOST": "127.0.0.1",
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(tiny_model_cache),
        "EARSHOT_LOG_LEVEL": "warning",
    }
    spool = tmp_path / "pool-cpu-spool"
    stores = {"EARSHOT_SEGMENTS_URL": mysql_url, "EARSHOT_PARTIALS_URL": redis_url}
    ports = {name: free_port() for name in ("cpu", "persister", "kyutai", "over-triton", "talk")}
    tiny_kyutai.ensure_tiny_checkpoint(tiny_model_cache)  # once, not in the gateway's start-up
    processes = [
        EarshotProcess(
            tmp_path / "cpu", "serve", port=ports["cpu"],
            environment={**common, **stores, "EARSHOT_PORT": str(ports["cpu"]),
                         "EARSHOT_SPOOL_DIR": str(spool), "EARSHOT_PERSISTER": "sidecar"},
        ),
        EarshotProcess(
            tmp_path / "persister", "persister", port=ports["persister"],
            environment={**common, **stores, "EARSHOT_SPOOL_DIR": str(spool),
                         "EARSHOT_PERSISTER_PORT": str(ports["persister"])},
        ),
        EarshotProcess(
            tmp_path / "kyutai", "serve", port=ports["kyutai"],
            environment={**common, "EARSHOT_PORT": str(ports["kyutai"]), "EARSHOT_ENGINE": "kyutai",
                         "EARSHOT_SPOOL_DIR": str(tmp_path / "pool-kyutai-spool"),
                         "EARSHOT_SEGMENTS_URL": f"sqlite:///{tmp_path / 'kyutai-pool.db'}"},
        ),
        EarshotProcess(
            tmp_path / "over-triton", "serve", port=ports["over-triton"],
            environment={**common, "EARSHOT_PORT": str(ports["over-triton"]),
                         "EARSHOT_TRITON_URL": triton.grpc_url,
                         "EARSHOT_SPOOL_DIR": str(tmp_path / "pool-triton-spool"),
                         "EARSHOT_SEGMENTS_URL": f"sqlite:///{tmp_path / 'triton-pool.db'}"},
        ),
        EarshotProcess(
            tmp_path / "talk", "talk", port=ports["talk"], health="/heartbeat",
            environment={**common, "APP_PORT": str(ports["talk"]), "APP_SECRET": "secret",
                         "LT_HPB_URL": "wss://hpb.invalid/standalone-signaling/",
                         "LT_INTERNAL_SECRET": "internal", "APP_HOST": "127.0.0.1",
                         "EARSHOT_SPOOL_DIR": str(tmp_path / "talk-spool"),
                         "EARSHOT_SEGMENTS_URL": f"sqlite:///{tmp_path / 'talk.db'}"},
        ),
    ]  # fmt: skip
    try:
        for process in processes:
            process.start()
    except ServerUnavailableError as exc:
        for process in processes:
            process.close()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Pods(
            ports={
                "cpu": (IN_PROCESS_POD, "gateway", ports["cpu"]),
                "persister": (IN_PROCESS_POD, "persister", ports["persister"]),
                "kyutai": (KYUTAI_POD, "gateway", ports["kyutai"]),
                "over-triton": (TRITON_POOL_POD, "gateway", ports["over-triton"]),
                "talk": (TALK_POD, "talk", ports["talk"]),
                "triton": (TRITON_POD, "triton", triton.metrics_port),
            },
            gateways=[f"ws://127.0.0.1:{ports[name]}" for name in ("cpu", "kyutai", "over-triton")],
        )
    finally:
        for process in reversed(processes):
            process.close()


@pytest.fixture
def prometheus(tmp_path: Path, pods: Pods) -> Iterator[PrometheusServer]:
    """A Prometheus scraping every pod each second, up once it has scraped them all."""
    try:
        server = PrometheusServer(tmp_path / "prometheus", _scrape_config(pods.ports)).start()
    except ServerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        _eventually(
            lambda: _value(server, "count(up == 1)") == len(pods.ports), what="every pod up"
        )
        yield server
    finally:
        server.close()


def _value(server: PrometheusServer, query: str) -> float:
    data: Any = server.api("query", query=query)
    return float(data["result"][0]["value"][1]) if data["result"] else 0.0


def _positive(server: PrometheusServer, query: str) -> Callable[[], bool]:
    return lambda: _value(server, query) > 0


def _eventually(condition: Callable[[], bool], *, what: str, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.2)


async def _stream_through_each(gateways: list[str]) -> None:
    frames = speech_frames()
    streams = [
        client.stream(session_url(base, f"dashboards-{n}"), frames, frame_seconds=0.02, speed=0,
                      linger=30.0)
        for n, base in enumerate(gateways)
    ]  # fmt: skip
    for result in await asyncio.gather(*streams):
        assert result.errors == []
        assert result.finals
    for base in gateways:  # and a client that breaks the protocol: a text frame
        received, _, _ = await until_closed(session_url(base, "dashboards-text"), ["hi"])
        assert [m.get("code") for m in received] == ["text_frame_not_supported"]


def _has_data(data: Any) -> bool:
    return any(value != "NaN" for series in data["result"] for _, value in series["values"])


async def test_every_dashboard_panel_returns_data_from_the_scraped_pods(
    prometheus: PrometheusServer, pods: Pods
) -> None:
    await _stream_through_each(pods.gateways)
    chosen, answered = await asyncio.to_thread(_evaluate_every_panel, prometheus)

    assert chosen == {
        "cluster": CLUSTER,
        "namespace": NAMESPACE,
        "release": RELEASE,
        "pod": grafana_value(sorted({pod for pod, _, _ in pods.ports.values()})),
    }
    assert set(ABSENT) <= set(answered), sorted(set(ABSENT) - set(answered))
    without_data = {panel: hits for panel, hits in answered.items() if not all(hits)}
    assert sorted(without_data) == sorted(ABSENT), "\n".join(map(str, without_data.items()))
    assert all(not any(without_data[panel]) for panel in ABSENT), without_data


def _evaluate_every_panel(
    prometheus: PrometheusServer,
) -> tuple[dict[str, str], dict[tuple[str, str], list[bool]]]:
    """The variables' choices, and per panel whether each of its queries returned data."""
    # Wait until Prometheus has scraped what the streams left behind (finals, Triton's requests,
    # the persister's writes), then until every pod is scraped twice more, so every rate has
    # samples after them.
    scope = f'{{namespace="{NAMESPACE}", release="{RELEASE}", cluster="{CLUSTER}"}}'
    for query in (
        f"count(sum by (pod) (earshot_segments_finalised_total{scope}) > 0)",
        f"sum(nv_inference_request_success{scope})",
        f"sum(earshot_persister_writes_total{scope})",
    ):
        _eventually(_positive(prometheus, query), what=query)
    finished = time.time()  # Prometheus runs on this machine's clock
    _eventually(
        lambda: _value(prometheus, "min(timestamp(up))") > finished + 2 * SCRAPE_SECONDS,
        what="every pod scraped twice more",
    )
    chosen = {path.stem: _choose_every_value(prometheus, path) for path in DASHBOARDS}
    assert len({json.dumps(c, sort_keys=True) for c in chosen.values()}) == 1, chosen
    answered: dict[tuple[str, str], list[bool]] = {}
    for target in _targets():
        data = prometheus.api(
            "query_range", query=substituted(target.expr, chosen[target.dashboard]),
            start=str(finished - 300), end=str(finished + 2 * SCRAPE_SECONDS), step="1",
        )  # fmt: skip
        answered.setdefault((target.dashboard, target.panel), []).append(_has_data(data))
    return chosen[DASHBOARDS[0].stem], answered


def _choose_every_value(prometheus: PrometheusServer, path: Path) -> dict[str, str]:
    """Each query variable of a dashboard answered in order, every value it offers chosen."""
    board = json.loads(path.read_text())
    chosen: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.fullmatch(variable["query"])
        assert match, variable["query"]
        selector, label = match.groups()
        values: Any = prometheus.api(
            f"label/{label}/values", **{"match[]": substituted(selector, chosen)}
        )
        assert values, f"{label}: the variable offers nothing"
        chosen[label] = grafana_value(sorted(values))
    return chosen
