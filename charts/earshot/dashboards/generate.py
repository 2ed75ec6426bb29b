"""Generate the chart's Grafana dashboards (dashboards/*.json) with grafana-foundation-sdk.

The JSON files are build output: edit this module, then run
``python charts/earshot/dashboards/generate.py`` (``--check`` fails when a file is stale; the chart
tests run it). Needs the ``ship`` extra. Every query names metrics that earshot or Triton export
(tests/chart/test_metric_names.py checks them against the running services).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
#: The labels a dashboard is narrowed by, in the order they narrow each other. ``cluster`` is the
#: Prometheus external label (or ``monitoring.serviceMonitor.cluster``); ``release`` is added by the
#: chart's ServiceMonitors and PodMonitor; a gateway pod is one session or room. Each variable's
#: "All" is ``.*``, which also matches a series without the label (one cluster, no chart monitors).
SCOPES = (
    ("cluster", "Cluster"),
    ("namespace", "Namespace"),
    ("release", "Release"),
    ("pod", "Pod"),
)
#: Every query is narrowed to the chosen values, so two releases or clusters in one Prometheus
#: never mix.
SCOPE = ", ".join(f'{label}=~"${label}"' for label, _ in SCOPES)
_METRIC = re.compile(r"\b((?:earshot|nv)_[a-zA-Z0-9_]+)(\{)?")
#: The latency SLOs of DESIGN.md (and of the burn-rate alerts): drawn as threshold lines.
FIRST_PARTIAL_SLO_S = 1.0
FINAL_SLO_S = 3.0


def scoped(expr: str) -> str:
    """``expr`` with the namespace and pod variables added to every metric selector."""

    def narrow(match: re.Match[str]) -> str:
        name, brace = match.group(1), match.group(2)
        return f"{name}{{{SCOPE}, " if brace else f"{name}{{{SCOPE}}}"

    return _METRIC.sub(narrow, expr)


@dataclass(frozen=True)
class Query:
    """One PromQL expression and its legend."""

    expr: str
    legend: str


def _target(query: Query, index: int = 0) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .ref_id(chr(ord("A") + index))
        .expr(scoped(query.expr))
        .legend_format(query.legend)
        .range()
        .datasource(DATASOURCE)
    )


def graph(
    title: str, unit: str, *queries: Query, description: str = "", slo: float | None = None
) -> timeseries.Panel:
    """A time series panel of ``queries``; ``slo`` draws that value as a red threshold line."""
    panel = timeseries.Panel().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if description:
        panel = panel.description(description)
    if slo is not None:
        steps = [
            models.Threshold(value=None, color="green"),
            models.Threshold(value=slo, color="red"),
        ]
        panel = panel.thresholds(
            dashboard.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(steps)
        ).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(common_models.GraphTresholdsStyleMode.LINE)
        )
    for index, query in enumerate(queries):
        panel = panel.with_target(_target(query, index))
    return panel


def single(title: str, unit: str, query: Query) -> stat.Panel:
    """A stat panel showing the latest value of ``query``."""
    return (
        stat.Panel()
        .title(title)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(4)
        .span(6)
        .with_target(_target(query))
    )


def quantiles(metric: str, by: str, *, window: str = "5m") -> list[Query]:
    """p50, p95 and p99 of a histogram, per value of the ``by`` label."""
    return [
        Query(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket[{window}])))",
            f"{{{{{by}}}}} {name}",
        )
        for name, q in QUANTILES
    ]


def rate(metric: str, by: str, legend: str = "", *, window: str = "5m") -> Query:
    """Per-second rate of a counter, summed by ``by`` (empty: one series)."""
    grouping = f" by ({by})" if by else ""
    return Query(f"sum{grouping} (rate({metric}[{window}]))", legend or f"{{{{{by}}}}}")


def _base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["earshot"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(_label_variable(0))
        .with_variable(_label_variable(1))
        .with_variable(_label_variable(2))
        .with_variable(_label_variable(3))
        .link(
            dashboard.DashboardLink("earshot")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags(["earshot"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def _label_variable(index: int) -> dashboard.QueryVariable:
    # values of the label on any earshot or Triton series, narrowed by the variables before it
    label, title = SCOPES[index]
    where = ", ".join(
        ['__name__=~"(earshot|nv)_.+"', *(f'{name}=~"${name}"' for name, _ in SCOPES[:index])]
    )
    return (
        dashboard.QueryVariable(label)
        .label(title)
        .datasource(DATASOURCE)
        .query(f"label_values({{{where}}}, {label})")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def overview() -> dashboard.Dashboard:
    """Streams, latency, real-time factor, overloads and dropped audio across all gateways."""
    return (
        _base("earshot-overview", "earshot / Overview", "Live speech-to-text: the whole system.")
        .with_row(dashboard.Row("Now"))
        .with_panel(single("Active streams", "short", Query("sum(earshot_active_streams)", "")))
        .with_panel(
            single("Talk speakers", "short", Query("sum(earshot_talk_speakers)", "speakers"))
        )
        .with_panel(single("Talk rooms", "short", Query("sum(earshot_talk_rooms)", "rooms")))
        .with_panel(
            single(
                "Finals per second",
                "ops",
                rate("earshot_segments_finalised_total", "", "finals"),
            )
        )
        .with_row(dashboard.Row("Streams and latency"))
        .with_panel(
            graph(
                "Active streams per pool",
                "short",
                Query("sum by (engine) (earshot_active_streams)", "{{engine}}"),
            )
        )
        .with_panel(
            graph(
                "Real-time factor",
                "short",
                *quantiles("earshot_real_time_factor", "engine")[:2],
                description="Processing time over audio duration per chunk; above 1 falls behind.",
            )
        )
        .with_panel(
            graph(
                "First-partial latency",
                "s",
                *quantiles("earshot_first_partial_latency_seconds", "engine"),
                slo=FIRST_PARTIAL_SLO_S,
                description="From a segment's first audio to its first partial (SLO: 99% < 1 s).",
            )
        )
        .with_panel(
            graph(
                "Final latency",
                "s",
                *quantiles("earshot_final_latency_seconds", "engine"),
                slo=FINAL_SLO_S,
                description="From the end of a segment's audio to its final (SLO: 99% < 3 s).",
            )
        )
        .with_panel(
            graph(
                "Audio-to-text lag (chunk processing)",
                "s",
                *quantiles("earshot_chunk_processing_seconds", "engine"),
            )
        )
        .with_panel(
            graph(
                "Audio received",
                "s",
                rate("earshot_audio_seconds_received_total", "gateway"),
                description="Seconds of audio per second: the number of real-time streams.",
            )
        )
        .with_row(dashboard.Row("Engine batching"))
        .with_panel(
            graph(
                "Batch fill (live streams advanced per step)",
                "percentunit",
                Query(
                    "sum by (engine) (rate(earshot_engine_streams_advanced_total[5m]))"
                    " / sum by (engine) (rate(earshot_engine_streams_live_total[5m]))",
                    "{{engine}}",
                ),
                description="Share of the live streams each model step of a clocked engine "
                "(Kyutai, in process and in Triton) advanced; below 90% the pool wastes steps.",
            )
        )
        .with_panel(
            graph(
                "Model steps per second",
                "ops",
                rate("earshot_engine_steps_total", "engine"),
                description="Steps of a clocked engine: 12.5 per second (one per 80 ms) per "
                "decoder when every live stream keeps up; more when streams catch up.",
            )
        )
        .with_panel(
            graph(
                "Model step time (mean)",
                "s",
                Query(
                    "sum by (engine) (rate(earshot_engine_step_seconds_total[5m]))"
                    " / sum by (engine) (rate(earshot_engine_steps_total[5m]))",
                    "{{engine}}",
                ),
                description="Mean time of one model step of a clocked engine; near the 80 ms "
                "period the device is too slow for its streams, whatever the batching.",
            )
        )
        .with_row(dashboard.Row("Trouble"))
        .with_panel(
            graph(
                "Gateway lag behind real time",
                "s",
                Query("max by (pod) (earshot_gateway_lag_seconds)", "{{pod}}"),
                description="How far each gateway process is behind real time (event-loop lag or "
                "audio waiting for the recogniser); above EARSHOT_MAX_LAG_SECONDS (0.5 s) it "
                "refuses new streams with 1013.",
            )
        )
        .with_panel(
            graph(
                "Triton behind the gateways",
                "s",
                Query("max by (pod) (earshot_triton_backlog_seconds)", "{{pod}}"),
                description="How far Triton is behind each gateway's streams: the age of its "
                "oldest unanswered request, or how far waiting for answers has held a stream "
                "behind real time. Above EARSHOT_MAX_LAG_SECONDS (0.5 s) the gateway refuses new "
                "streams with 1013; scale the Triton pool for it, not the gateways. Empty for "
                "gateways with an in-process engine.",
            )
        )
        .with_panel(
            graph(
                "Inference load (in-process engine)",
                "percentunit",
                Query("max by (pod) (earshot_inference_load_ratio)", "{{pod}}"),
                description="The share of each telephony gateway's in-process inference workers "
                "that its streams take, from what a second of audio costs to decode; above "
                "EARSHOT_MAX_INFERENCE_LOAD (0.9) it refuses new streams with 1013. Empty for "
                "gateways on Triton (the chart's pools and sessions).",
                slo=0.9,
            )
        )
        .with_panel(
            graph(
                "Overload and spool-full rejections",
                "ops",
                rate("earshot_overload_rejections_total", "engine", "overload {{engine}}"),
                rate("earshot_spool_full_rejections_total", "gateway", "spool full {{gateway}}"),
                rate("earshot_talk_admission_rejections_total", "", "talk admission"),
            )
        )
        .with_panel(
            graph(
                "Dropped audio",
                "ops",
                rate("earshot_talk_frames_dropped_total", "", "talk frames dropped"),
                rate("earshot_triton_audio_lost_seconds_total", "model", "lost s {{model}}"),
            )
        )
        .with_panel(
            graph(
                "Errors",
                "ops",
                rate("earshot_engine_errors_total", "engine", "engine {{engine}}"),
                rate("earshot_protocol_errors_total", "reason", "protocol {{reason}}"),
                rate("earshot_talk_signaling_errors_total", "code", "signaling {{code}}"),
            )
        )
        .with_panel(
            graph(
                "Talk captions sent",
                "ops",
                rate("earshot_talk_captions_sent_total", "kind"),
                rate("earshot_talk_signaling_reconnects_total", "", "signaling reconnects"),
            )
        )
        .with_row(dashboard.Row("Talk captions and translation"))
        .with_panel(
            graph(
                "Talk: audio to first caption",
                "s",
                *quantiles("earshot_talk_first_caption_latency_seconds", "engine"),
                description="From a speaker's first audible frame to the segment's first caption"
                " sent (SLO: 99% < 1 s).",
            )
        )
        .with_panel(
            graph(
                "Talk: audio to final caption",
                "s",
                *quantiles("earshot_talk_final_caption_latency_seconds", "engine"),
                description="From the audio that ended a segment to its final caption sent"
                " (SLO: 99% < 3 s).",
            )
        )
        .with_panel(
            graph(
                "Talk translations",
                "ops",
                rate("earshot_talk_translations_total", "outcome"),
                description="Translated finals sent, failed (TaskProcessing) and dropped (behind).",
            )
        )
        .with_panel(
            graph(
                "Talk: caption to translation",
                "s",
                Query(
                    "histogram_quantile(0.5, sum by (le)"
                    " (rate(earshot_talk_translation_latency_seconds_bucket[5m])))",
                    "p50",
                ),
                Query(
                    "histogram_quantile(0.95, sum by (le)"
                    " (rate(earshot_talk_translation_latency_seconds_bucket[5m])))",
                    "p95",
                ),
            )
        )
        .with_panel(
            graph(
                "Talk: transcript finals kept",
                "ops",
                rate("earshot_talk_transcript_finals_total", "outcome"),
                description="Finals of Talk calls spooled for the transcript store, by outcome.",
            )
        )
    )


def triton() -> dashboard.Dashboard:
    """Triton pools: queue versus compute time, batch size, utilisation, failures."""
    per_request = "sum by (model) (rate(nv_inference_request_success[5m]))"
    return (
        _base("earshot-triton", "earshot / Triton pools", "Triton Inference Server pools.")
        .with_row(dashboard.Row("Time per request"))
        .with_panel(
            graph(
                "Queue vs compute time per request",
                "µs",
                Query(
                    f"sum by (model) (rate(nv_inference_queue_duration_us[5m])) / {per_request}",
                    "queue {{model}}",
                ),
                Query(
                    "sum by (model) (rate(nv_inference_compute_infer_duration_us[5m]))"
                    f" / {per_request}",
                    "compute {{model}}",
                ),
                description="Queue above compute means the pool is saturated: scale it out.",
            )
        )
        .with_panel(
            graph(
                "Queue / compute ratio",
                "short",
                Query(
                    "sum by (model) (rate(nv_inference_queue_duration_us[5m]))"
                    " / sum by (model) (rate(nv_inference_compute_infer_duration_us[5m]))",
                    "{{model}}",
                ),
            )
        )
        .with_row(dashboard.Row("Throughput"))
        .with_panel(
            graph(
                "Batch size (inferences per execution)",
                "short",
                Query(
                    "sum by (model) (rate(nv_inference_count[5m]))"
                    " / sum by (model) (rate(nv_inference_exec_count[5m]))",
                    "{{model}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Instance utilisation (busy instances)",
                "short",
                Query(
                    "sum by (model, pod) (rate(nv_inference_compute_infer_duration_us[5m])) / 1e6",
                    "{{model}} {{pod}}",
                ),
                description="Compute seconds per second: 1 is one model instance busy all the time.",
            )
        )
        .with_panel(
            graph(
                "Requests",
                "reqps",
                rate("nv_inference_request_success", "model", "ok {{model}}"),
                Query(
                    "sum by (model, reason) (rate(nv_inference_request_failure[5m]))",
                    "failed {{model}} {{reason}}",
                ),
            )
        )
        .with_panel(
            graph(
                "Pending requests",
                "short",
                Query("sum by (model) (nv_inference_pending_request_count)", "{{model}}"),
            )
        )
        .with_row(dashboard.Row("GPUs (the kyutai pool)"))
        .with_panel(
            graph(
                "GPU utilisation",
                "percentunit",
                Query("avg by (pod, gpu_uuid) (nv_gpu_utilization)", "{{pod}} {{gpu_uuid}}"),
                description="Triton's own GPU metrics; empty while the GPU pool is off.",
            )
        )
        .with_panel(
            graph(
                "GPU memory used",
                "percentunit",
                Query(
                    "sum by (pod, gpu_uuid) (nv_gpu_memory_used_bytes)"
                    " / sum by (pod, gpu_uuid) (nv_gpu_memory_total_bytes)",
                    "{{pod}} {{gpu_uuid}}",
                ),
            )
        )
        .with_panel(
            graph(
                "GPU power",
                "watt",
                Query("sum by (pod, gpu_uuid) (nv_gpu_power_usage)", "{{pod}} {{gpu_uuid}}"),
            )
        )
        .with_row(dashboard.Row("Gateway side"))
        .with_panel(
            graph(
                "Round trip (gateway to Triton)",
                "s",
                *quantiles("earshot_triton_round_trip_seconds", "model"),
            )
        )
        .with_panel(
            graph(
                "Reconnects",
                "ops",
                rate("earshot_triton_reconnects_total", "model"),
            )
        )
    )


def persistence() -> dashboard.Dashboard:
    """The spool and the persister: depth, age, write latency, retries."""
    return (
        _base(
            "earshot-persistence",
            "earshot / Persistence",
            "Spools and persister sidecars draining them to Redis and MySQL.",
        )
        .with_row(dashboard.Row("Spool"))
        .with_panel(
            graph(
                "Spool depth",
                "bytes",
                Query("sum by (pod) (earshot_persister_backlog_bytes)", "backlog {{pod}}"),
                Query("sum by (pod) (earshot_spool_bytes)", "unacknowledged {{pod}}"),
            )
        )
        .with_panel(
            graph(
                "Oldest unacknowledged event",
                "s",
                Query("max by (pod) (earshot_persister_oldest_unacked_age_seconds)", "{{pod}}"),
            )
        )
        .with_panel(
            graph(
                "Unacknowledged records",
                "short",
                Query("sum by (pod) (earshot_spool_records)", "{{pod}}"),
            )
        )
        .with_panel(
            graph(
                "Spool fsync",
                "s",
                *quantiles("earshot_spool_fsync_seconds", "pod")[1:2],
            )
        )
        .with_row(dashboard.Row("Writes"))
        .with_panel(
            graph(
                "Write latency",
                "s",
                *quantiles("earshot_persister_write_seconds", "store"),
            )
        )
        .with_panel(
            graph(
                "Writes by kind",
                "ops",
                rate("earshot_persister_writes_total", "kind"),
            )
        )
        .with_panel(
            graph(
                "Retries and failures",
                "ops",
                rate("earshot_persister_retries_total", "store", "retries {{store}}"),
                rate("earshot_storage_errors_total", "store", "errors {{store}}"),
                rate("earshot_spool_corrupt_records_total", "", "corrupt records skipped"),
            )
        )
        .with_panel(
            graph(
                "Records per batch",
                "short",
                *quantiles("earshot_persister_batch_records", "pod")[:2],
            )
        )
    )


def operator() -> dashboard.Dashboard:
    """The operator: resources by phase, failures, reconcile time."""
    return (
        _base("earshot-operator", "earshot / Operator", "TranscriptionSessions and TalkRooms.")
        .with_panel(
            graph(
                "Resources by phase",
                "short",
                Query("sum by (kind, phase) (earshot_operator_resources)", "{{kind}} {{phase}}"),
            )
        )
        .with_panel(
            graph(
                "Failed resources (reconcile errors)",
                "short",
                Query('sum by (kind) (earshot_operator_resources{phase="Failed"})', "{{kind}}"),
            )
        )
        .with_panel(
            graph(
                "Reconcile duration",
                "s",
                *quantiles("earshot_operator_reconcile_duration_seconds", "kind"),
            )
        )
        .with_panel(
            graph(
                "Reconciles per second",
                "ops",
                rate("earshot_operator_reconcile_duration_seconds_count", "kind"),
            )
        )
    )


DASHBOARDS = {
    "overview": overview,
    "triton": triton,
    "persistence": persistence,
    "operator": operator,
}


def render(name: str) -> str:
    """The JSON of one dashboard, stable across runs."""
    built = DASHBOARDS[name]().build()
    return json.dumps(json.loads(JSONEncoder().encode(built)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) every dashboard; 1 when a file is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path, text = HERE / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
