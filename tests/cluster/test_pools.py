"""Gateway pools on the real single-node cluster: the chart's default pool (two gateway pods a real
kubelet made Ready), sessions placed on it by ``kubectl apply``, a caller streaming through the
pool's Service from the node's network namespace.

What this shows: a pooled session is Ready and streams with no pod started for it; one session's
token does not admit another; deactivating or deleting a session ends its live stream; deleting
the pool pod a stream is on (what a scale-down does) drains it: the client hears its last finals
and 1012, reconnects to the other pod, and every final is stored once. Scaling on load is
test_pool_scaling.py's.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.release import RELEASE, Release, client_argv, installed_release, run_client
from tests.cluster.test_sre_path import _closes, _session, _wait_phase

POOL = {"placement": {"pool": "default"}}
POOL_LABEL = "app.kubernetes.io/component=pool-default"


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart installed with the local images; every pod Ready; uninstalled afterwards.

    In a namespace of its own: the other modules' releases (and volumes) may be in the cluster.
    """
    with installed_release(cluster, namespace="earshot-pools") as installed:
        yield installed
        installed.helm("uninstall", RELEASE, "--wait")


def _pods_and_pool_restarts(release: Release) -> tuple[set[str], set[tuple[str, str, int]]]:
    """Every pod's UID, and the pool's containers as (pod UID, name, restarts)."""
    pods = release.get("pods")["items"]
    restarts = {
        (pod["metadata"]["uid"], status["name"], status["restartCount"])
        for pod in release.get("pods", "-l", POOL_LABEL)["items"]
        for status in pod["status"].get("containerStatuses", [])
    }
    return {pod["metadata"]["uid"] for pod in pods}, restarts


def _apply_pooled(release: Release, name: str, **spec: Any) -> tuple[str, str]:
    release.kubectl("apply", "-f", "-", stdin=_session(name, **POOL, **spec))
    status = _wait_phase(release, name, "Ready")
    return status["endpoint"], release.secret_value(status["tokenSecret"], "token")


def _stored(release: Release, session: str, count: int) -> list[list[str]]:
    query = (
        "SELECT segment_seq, content FROM segments "
        f"WHERE session_id = '{session}' ORDER BY segment_seq"
    )
    deadline = time.monotonic() + 30.0  # the sidecar stores a final shortly after it is told
    while len(rows := release.mysql(query)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return rows


def _check_stored_once(release: Release, name: str, finals: list[dict[str, Any]]) -> None:
    """The finals told, numbered with no gap or repeat, are the session's first rows, once each.

    The store may hold more after them: the protocol has no end-of-stream, so the client leaves
    once a final was followed by quiet (``client.SETTLE_SECONDS``), and what the server still held
    then becomes a final stored and never told (CI once stored a 13th final, "it", after the 12
    told). An untold final of a drained connection still shows, as a gap: the next connection
    numbers on from the seq the drained one released its session lease with, and the callers
    check that a final was told after the reconnect.
    """
    seqs = [f["seq"] for f in finals]
    assert seqs == list(range(1, len(finals) + 1)), seqs  # no number skipped or repeated
    stored = _stored(release, name, len(finals))
    assert stored[: len(finals)] == [[str(f["seq"]), f["text"]] for f in finals], stored


def test_a_pooled_session_streams_without_any_pod_start(release: Release) -> None:
    pods, restarts = _pods_and_pool_restarts(release)
    endpoint, token = _apply_pooled(release, "pooled")
    assert (
        endpoint == f"ws://{RELEASE}-pool-default.{release.namespace}.svc:8000/ws/transcribe/pooled"
    )
    messages = run_client(release.cluster, endpoint, f"--token={token}", "--speed", "0")
    finals = [m for m in messages if m["type"] == "final"]
    assert finals, messages
    pods_after, restarts_after = _pods_and_pool_restarts(release)
    assert pods_after == pods, "a pod was started for a pooled session"
    assert restarts_after == restarts, "a pool container restarted"
    assert _stored(release, "pooled", len(finals)) == [[str(f["seq"]), f["text"]] for f in finals]


def test_a_pooled_session_refuses_another_sessions_token(release: Release) -> None:
    endpoint, _ = _apply_pooled(release, "pool-a")
    _, other = _apply_pooled(release, "pool-b")
    # paced: a client sending flat out may hit the reset of the refused connection mid-send
    messages = run_client(release.cluster, endpoint, f"--token={other}", "--speed", "1")
    closes = _closes(messages)
    assert len(closes) == 1, messages
    assert (closes[0]["code"], closes[0]["reason"]) == (1008, "unauthorized"), messages
    assert not [m for m in messages if m["type"] in ("partial", "final")]


def _stream_until_first_final(
    release: Release, endpoint: str, token: str, *extra: str
) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    argv = client_argv(endpoint, f"--token={token}", "--repeat", "6", *extra)
    client = subprocess.Popen(release.cluster.exec_inside(argv), stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    messages: list[dict[str, Any]] = []
    for line in client.stdout:
        messages.append(json.loads(line))
        if messages[-1]["type"] == "final":
            break
    return client, messages


def _rest(client: subprocess.Popen[str], messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    try:
        out, _ = client.communicate(timeout=300)
    finally:
        client.kill()
        client.wait()
    return messages + [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("ending", ["deactivate", "delete"])
def test_ending_a_pooled_session_ends_its_live_stream(release: Release, ending: str) -> None:
    name = f"ending-{ending}"
    endpoint, token = _apply_pooled(release, name)
    client, messages = _stream_until_first_final(release, endpoint, token)
    started = time.monotonic()
    if ending == "delete":
        release.kubectl("delete", "transcriptionsession", name, "--wait=false")
    else:
        release.kubectl("apply", "-f", "-", stdin=_session(name, **POOL, active=False))
    messages = _rest(client, messages)
    took = time.monotonic() - started
    print(f"{ending}: the stream ended {took:.1f} s after kubectl was run")
    closes = _closes(messages)
    assert len(closes) == 1, messages
    assert (closes[0]["code"], closes[0]["reason"]) == (1000, "session ended"), messages
    (error,) = [m for m in messages if m["type"] == "error"]
    assert error["code"] == "session_ended"
    assert took < 10.0, f"the stream ran on {took:.1f} s after its session ended"
    finals = [m for m in messages if m["type"] == "final"]
    assert _stored(release, name, len(finals))[: len(finals)] == [
        [str(f["seq"]), f["text"]] for f in finals
    ]


def _streaming_pod(release: Release) -> str:
    """The pool pod with an active stream (from its own /metrics)."""
    probe = (
        "import urllib.request;"
        "print(sum(float(l.split()[-1]) for l in urllib.request.urlopen("
        "'http://127.0.0.1:8000/metrics').read().decode().splitlines()"
        " if l.startswith('earshot_active_streams{')))"
    )
    for pod in release.get("pods", "-l", POOL_LABEL)["items"]:
        name = pod["metadata"]["name"]
        if float(release.exec(name, "gateway", "python", "-c", probe)) > 0:
            return str(name)
    raise AssertionError("no pool pod has an active stream")


def test_a_pool_pod_going_away_drains_its_stream_and_loses_no_final(release: Release) -> None:
    endpoint, token = _apply_pooled(release, "draining")
    client, messages = _stream_until_first_final(release, endpoint, token, "--reconnect")
    release.kubectl("delete", "pod", _streaming_pod(release), "--wait=false")
    messages = _rest(client, messages)
    closes = _closes(messages)
    assert closes[0]["code"] == 1012, closes  # drained: last finals told, then "reconnect"
    finals = [m for m in messages if m["type"] == "final"]
    first_close = messages.index(closes[0])
    assert [m for m in messages[first_close:] if m["type"] == "final"], "no final after reconnect"
    _check_stored_once(release, "draining", finals)
