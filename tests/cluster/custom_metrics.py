"""The custom metrics API of the test cluster: a minimal stand-in for prometheus-adapter.

The HPA controller reads a ``Pods`` metric through the aggregated API ``custom.metrics.k8s.io``:
``GET /apis/custom.metrics.k8s.io/v1beta1/namespaces/<ns>/pods/*/<metric>?labelSelector=<the
scale target's selector>``, answered with a MetricValueList, one item per pod. In a real cluster
prometheus-adapter answers it from Prometheus, which scrapes the pods (for a pool, the chart's
ServiceMonitor: each pod's ``http`` and ``persister`` ports at /metrics), with a rule that sums the
series by pod. There is no Prometheus here, so this server does both steps on each request: it
lists the selected pods through the API server, scrapes every declared TCP port of each running
pod at /metrics (the Prometheus text format, parsed by prometheus_client) and answers, per pod,
the sum of the samples named ``<metric>`` over all their labels. A pod that does not answer or has
no such sample is left out, as a pod without a series is.

It runs as a process of the harness in the node's network namespace, not as a pod (no image to
build). Like any aggregated API server it is reached only through the aggregator: it requires a
client certificate from the requestheader CA with the front proxy's name, and does no further
authorisation (the HPA controller is its only caller). It serves the metrics in
:data:`METRICS`, as an adapter serves those its rules name, and lists them in its discovery
document (with an empty list, the controller-manager's discovery reports the group as failed and
asks again and again). Not served: other kinds than pods, named objects, metric label selectors.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import re
import ssl
import sys
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

GROUP: Final = "custom.metrics.k8s.io"
VERSION: Final = "v1beta1"
#: The Service (no selector) and Endpoints in kube-system that the APIService names.
SERVICE: Final = "earshot-custom-metrics"
SERVICE_NAMESPACE: Final = "kube-system"
PORT: Final = 6444
#: The common name of the aggregator's client certificate (--proxy-client-cert-file).
FRONT_PROXY: Final = "front-proxy-client"
SCRAPE_TIMEOUT_S: Final = 2.0
#: The metrics served: what the chart's pool HPA asks for (charts/earshot/templates/pools).
METRICS: Final = ("earshot_active_streams", "earshot_gateway_lag_seconds")
_PODS_METRIC: Final = re.compile(
    rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/([^/]+)/pods/\*/([^/]+)$"
)


def pod_value(exposition: str, metric: str) -> float | None:
    """The sum of the samples named ``metric`` in a Prometheus text exposition (None: none)."""
    values = [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == metric
    ]
    return sum(values) if values else None


def metric_value_list(
    namespace: str, metric: str, values: dict[str, float], now: datetime.datetime
) -> dict[str, Any]:
    """The MetricValueList of ``metric`` for the pods in ``values`` (pod name -> value)."""
    return {
        "kind": "MetricValueList",
        "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {},
        "items": [
            {
                "describedObject": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod,
                    "apiVersion": "/v1",
                },
                "metricName": metric,
                "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                # thousandths: the HPA compares MilliValue()s, so 0.25 s of lag is not rounded away
                "value": f"{round(value * 1000)}m",
            }
            for pod, value in sorted(values.items())
        ],
    }


def resource_list() -> dict[str, Any]:
    """The discovery document: one ``pods/<metric>`` resource per served metric."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{GROUP}/{VERSION}",
        "resources": [
            {
                "name": f"pods/{metric}",
                "singularName": "",
                "namespaced": True,
                "kind": "MetricValueList",
                "verbs": ["get"],
            }
            for metric in METRICS
        ],
    }


def manifests(ca_bundle: bytes, address: str) -> list[dict[str, Any]]:
    """The APIService, and the Service without selector plus Endpoints that lead to ``address``."""
    port = {"name": "https", "port": PORT, "protocol": "TCP"}
    meta = {"name": SERVICE, "namespace": SERVICE_NAMESPACE}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"ports": [{**port, "port": 443, "targetPort": PORT}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": meta,
            "subsets": [{"addresses": [{"ip": address}], "ports": [port]}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{VERSION}.{GROUP}"},
            "spec": {
                "group": GROUP,
                "version": VERSION,
                "service": {"name": SERVICE, "namespace": SERVICE_NAMESPACE, "port": 443},
                "caBundle": base64.b64encode(ca_bundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


class PodMetrics:
    """Reads the selected pods from the API server and their metrics from the pods."""

    def __init__(self, apiserver: str, context: ssl.SSLContext) -> None:
        self._apiserver, self._context = apiserver, context

    def values(self, namespace: str, selector: str, metric: str) -> dict[str, float]:
        """Each selected running pod's sum of ``metric`` (pods without one are left out)."""
        query = urllib.parse.urlencode({"labelSelector": selector})
        url = f"{self._apiserver}/api/v1/namespaces/{namespace}/pods?{query}"
        with urllib.request.urlopen(url, context=self._context, timeout=10) as response:
            pods = json.load(response)["items"]
        values = {}
        for pod in pods:
            value = self._scrape(pod, metric)
            if value is not None:
                values[pod["metadata"]["name"]] = value
        return values

    def _scrape(self, pod: dict[str, Any], metric: str) -> float | None:
        address = pod["status"].get("podIP")
        if pod["status"].get("phase") != "Running" or not address:
            return None
        found = []
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                if port.get("protocol", "TCP") != "TCP":
                    continue
                url = f"http://{address}:{port['containerPort']}/metrics"
                try:
                    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
                        text = response.read().decode()
                except OSError as error:  # not an HTTP port, or the pod is stopping: no series
                    print(f"{pod['metadata']['name']}: {url}: {error}", file=sys.stderr)
                    continue
                if (value := pod_value(text, metric)) is not None:
                    found.append(value)
        return sum(found) if found else None


def _status(code: HTTPStatus, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": code.phrase.replace(" ", ""),
        "code": int(code),
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self._from_front_proxy():
            self._send(*self._answer())
        else:
            self._send(
                HTTPStatus.UNAUTHORIZED, _status(HTTPStatus.UNAUTHORIZED, "not the aggregator")
            )

    def _answer(self) -> tuple[HTTPStatus, dict[str, Any]]:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == f"/apis/{GROUP}/{VERSION}":
            return HTTPStatus.OK, resource_list()
        match = _PODS_METRIC.match(urllib.parse.unquote(url.path))
        if match is None or match[2] not in METRICS or query.get("metricLabelSelector"):
            return HTTPStatus.NOT_FOUND, _status(HTTPStatus.NOT_FOUND, f"not served: {self.path}")
        namespace, metric = match.groups()
        selector = query.get("labelSelector", [""])[0]
        try:
            values = self.server.pods.values(namespace, selector, metric)
        except OSError as error:  # the API server restarting: the HPA asks again next sync
            return HTTPStatus.SERVICE_UNAVAILABLE, _status(
                HTTPStatus.SERVICE_UNAVAILABLE, str(error)
            )
        now = datetime.datetime.now(datetime.UTC)
        return HTTPStatus.OK, metric_value_list(namespace, metric, values, now)

    def _from_front_proxy(self) -> bool:
        assert isinstance(self.connection, ssl.SSLSocket)
        subject = (self.connection.getpeercert() or {}).get("subject", ())
        return (("commonName", FRONT_PROXY),) in subject

    def _send(self, code: HTTPStatus, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], pods: PodMetrics) -> None:
        super().__init__(address, _Handler)
        self.pods = pods


def main(argv: list[str]) -> int:
    """Serve the API on ``--listen`` until killed."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.custom_metrics")
    parser.add_argument("--listen", required=True, help="IP the aggregator dials (port: PORT)")
    parser.add_argument("--apiserver", required=True, help="https://host:port of kube-apiserver")
    parser.add_argument("--pki", type=Path, required=True, help="the cluster's certificates")
    args = parser.parse_args(argv)
    pki: Path = args.pki
    client = ssl.create_default_context(cafile=pki / "ca.crt")
    client.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    server = _Server((args.listen, PORT), PodMetrics(args.apiserver, client))
    serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    serving.load_cert_chain(pki / "custom-metrics.crt", pki / "custom-metrics.key")
    serving.verify_mode = ssl.CERT_REQUIRED
    serving.load_verify_locations(pki / "ca.crt")  # the requestheader CA
    server.socket = serving.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
