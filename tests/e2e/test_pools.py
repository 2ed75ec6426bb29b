"""Gateway pools against the real API server and operator: a pooled session is Ready once
registered (no Deployment, Service or pod of its own), and a pool gateway process, with the
least-privilege role of the chart's pool, follows registrations: it admits each session with its
own token and ends a live stream when its session is deactivated or deleted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from earshot.audio.codecs import Codec
from earshot.cli import demoing
from earshot.engines import loading
from earshot.gateways.g711 import client
from earshot.settings import Settings
from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import ControlPlane
from tests.e2e.controlplane.operators import POOL, POOL_ADDRESS, free_port
from tests.e2e.kubelets import ContainerProcess, mount_token
from tests.e2e.test_events import _event

REPO = Path(__file__).resolve().parents[2]
POOL_TEMPLATE = REPO / "charts/earshot/templates/pools/gateways.yaml"
PLACED = {"placement": {"pool": POOL}}


def _pool_rules() -> list[dict[str, Any]]:
    """The rules of the chart's pool ClusterRole (they carry no template expressions)."""
    text = POOL_TEMPLATE.read_text()
    start = text.index("kind: ClusterRole\n")
    rules: list[dict[str, Any]] = yaml.safe_load(
        text[text.index("rules:\n", start) : text.index("---", start)]
    )["rules"]
    return rules


def _path(body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return path_of(
        helpers.API_VERSION, body["kind"], namespace=meta["namespace"], name=meta["name"]
    )


async def _ready(api: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    return await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Ready"), what=f"{body['metadata']['name']} Ready"
    )


async def _token(api: KubeClient, namespace: str, status: dict[str, Any]) -> str:
    secret = await api.get(path_of("v1", "Secret", namespace=namespace, name=status["tokenSecret"]))
    assert secret is not None
    return base64.b64decode(secret["data"]["token"]).decode()


async def test_a_pooled_session_is_ready_at_once_with_no_objects_of_its_own(
    api: KubeClient, namespace: str
) -> None:
    body = helpers.session_body("call-1", namespace, sessionId="pbx:1", **PLACED)
    await api.create(body)
    ready = await _ready(api, body)
    status = ready["status"]
    assert status["endpoint"] == f"ws://{POOL_ADDRESS}/ws/transcribe/pbx:1"
    assert status["placement"] == f"pool/{POOL}"
    assert status["reason"] == "Registered"
    token = await _token(api, namespace, status)
    registration = status["registration"]
    assert registration["tokenSha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert (registration["pool"], registration["sessionId"]) == (POOL, "pbx:1")
    assert registration["settings"]["EARSHOT_USER_ID"] == "alice"
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap")):
        path = path_of(api_version, kind, namespace=namespace)
        listed = await helpers.list_items(api, path, selector="app.kubernetes.io/managed-by")
        assert listed == [], f"a pooled session made a {kind}"


async def test_deactivating_a_pooled_session_unregisters_it(
    api: KubeClient, namespace: str
) -> None:
    body = helpers.session_body("call-2", namespace, **PLACED)
    await api.create(body)
    await _ready(api, body)
    await api.patch(_path(body), {"spec": {"active": False}})
    done = await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Completed"), what="the session Completed"
    )
    assert "registration" not in done["status"]
    assert "endpoint" not in done["status"]


async def test_a_pool_of_another_engine_or_a_move_is_refused(
    api: KubeClient, namespace: str
) -> None:
    body = helpers.session_body("call-3", namespace, engine="kyutai", **PLACED)
    await api.create(body)
    failed = await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Failed"), what="the session Failed"
    )
    assert failed["status"]["reason"] == "InvalidSpec"
    assert "runs engine paraformer, the session asks for kyutai" in failed["status"]["message"]


async def test_a_session_id_another_session_holds_waits_unregistered_until_it_goes(
    api: KubeClient, namespace: str
) -> None:
    held = helpers.session_body("call-held", namespace, sessionId="pbx:9", **PLACED)
    await api.create(held)
    await _ready(api, held)
    waiting = helpers.session_body("call-waiting", namespace, sessionId="pbx:9", **PLACED)
    await api.create(waiting)

    async def taken() -> dict[str, Any] | None:
        current = await helpers.resource(api, waiting)
        status = (current or {}).get("status") or {}
        return status if status.get("reason") == "SessionIdTaken" else None

    status = await helpers.eventually(taken, what="the second session told the id is taken")
    assert status["phase"] == "Pending"
    assert f"by TranscriptionSession {namespace}/call-held" in status["message"]
    warning = await helpers.eventually(
        lambda: _event(api, namespace, "call-waiting", "Warning", "SessionIdTaken"),
        what="a Warning event",
    )
    assert f"{namespace}/call-held" in warning["message"]
    assert "registration" not in status
    assert "endpoint" not in status
    holder = await helpers.resource(api, held)
    assert holder is not None
    assert holder["status"]["phase"] == "Ready"
    assert holder["status"]["registration"]["sessionId"] == "pbx:9"
    # the holder goes: its deletion event has the operator reconcile the session waiting for its
    # id (this operator's drift pass, every 2 s, would too: the test does not tell them apart)
    await api.delete(_path(held))
    ready = await helpers.eventually(
        lambda: helpers.phase_is(api, waiting, "Ready"), timeout_s=10.0, what="the id taken over"
    )
    assert ready["status"]["registration"]["sessionId"] == "pbx:9"
    assert ready["status"]["endpoint"].endswith("/ws/transcribe/pbx:9")


# --- a pool gateway process following the API server -------------------------------------------


@pytest.fixture(scope="module")
def model_cache(tiny_model_cache: Path) -> Path:
    """The tiny model, built once before the gateway process needs it."""

    async def build() -> None:
        engine = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
        await engine.aclose()

    asyncio.run(build())
    return tiny_model_cache


@pytest_asyncio.fixture
async def pool_gateway(
    api: KubeClient,
    control_plane: ControlPlane,
    namespace: str,
    model_cache: Path,
    tmp_path: Path,
) -> AsyncIterator[str]:
    """``earshot serve`` in pool mode with the chart's pool role; yields its ws:// base URL."""
    account = f"pool-{namespace}"
    rbac = "rbac.authorization.k8s.io/v1"
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        }
    )
    role = {
        "apiVersion": rbac,
        "kind": "ClusterRole",
        "metadata": {"name": account},
        "rules": _pool_rules(),
    }
    binding = {
        "apiVersion": rbac,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": account},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": account,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
    for manifest in (role, binding):
        control_plane.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    mounted = await mount_token(
        api, namespace, account, ca=control_plane.ca, folder=tmp_path / "sa"
    )
    port = free_port()
    env = {
        "EARSHOT_POOL": POOL,
        "EARSHOT_HOST": "127.0.0.1",
        "EARSHOT_PORT": str(port),
        "EARSHOT_KUBE_API_URL": control_plane.server,
        "EARSHOT_SERVICE_ACCOUNT_DIR": str(mounted),
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(model_cache),
        "EARSHOT_SPOOL_DIR": str(tmp_path / "spool"),
        "EARSHOT_SEGMENTS_URL": f"sqlite:///{tmp_path / 'segments.db'}",
    }
    with ContainerProcess(["earshot", "serve"], env, log=tmp_path / "pool.log") as gateway:
        health = f"http://127.0.0.1:{port}/health"
        await helpers.eventually(
            lambda: _healthy(gateway, health),
            timeout_s=60.0,
            what=f"the pool gateway:\n{gateway.tail()}",
        )
        yield f"ws://127.0.0.1:{port}"
    control_plane.kubectl("delete", "clusterrolebinding,clusterrole", account)


async def _healthy(gateway: ContainerProcess, url: str) -> bool:
    assert gateway.running, gateway.tail()
    status, _ = await asyncio.to_thread(gateway.probe, url)
    return status == 200


def _frames(repeats: int) -> Iterator[bytes]:
    audio = demoing.sample_audio() * repeats
    yield from client.frames_of(audio, codec=Codec.ALAW, rate=8000, frame_ms=20)


async def _refusal(url: str, token: str) -> tuple[int | None, str]:
    result = await client.stream(url, _frames(1), frame_seconds=0.02, speed=0, token=token)
    codes = [e["code"] for e in result.errors]
    return result.close_code, codes[0] if codes else ""


async def test_the_pool_admits_each_session_with_its_own_token_only(
    api: KubeClient, namespace: str, pool_gateway: str
) -> None:
    tokens = {}
    for name in ("iso-a", "iso-b"):
        body = helpers.session_body(name, namespace, **PLACED)
        await api.create(body)
        tokens[name] = await _token(api, namespace, (await _ready(api, body))["status"])
    url_a = f"{pool_gateway}/ws/transcribe/iso-a"
    assert await _refusal(url_a, tokens["iso-b"]) == (1008, "unauthorized")
    assert await _refusal(f"{pool_gateway}/ws/transcribe/iso-z", tokens["iso-a"]) == (
        1008,
        "session_not_registered",
    )
    own = await client.stream(
        url_a, _frames(1), frame_seconds=0.02, speed=0, token=tokens["iso-a"], linger=5.0
    )
    assert own.finals, f"session iso-a was not recognised: {own}"
    assert own.errors == []


async def _stream_then(
    api: KubeClient, namespace: str, base: str, name: str, action: dict[str, Any] | None
) -> tuple[client.StreamResult, float]:
    """Stream a session in real time; at its first final, patch it (or delete it: None)."""
    body = helpers.session_body(name, namespace, **PLACED)
    await api.create(body)
    token = await _token(api, namespace, (await _ready(api, body))["status"])
    got_final = asyncio.Event()
    streaming = asyncio.create_task(
        client.stream(
            f"{base}/ws/transcribe/{name}",
            _frames(30),
            frame_seconds=0.02,
            speed=1.0,
            token=token,
            on_message=lambda m: got_final.set() if m["type"] == "final" else None,
        )
    )
    await asyncio.wait_for(got_final.wait(), 30.0)
    started = time.monotonic()
    if action is None:
        await api.delete(_path(body))
    else:
        await api.patch(_path(body), action)
    result = await asyncio.wait_for(streaming, 30.0)
    return result, time.monotonic() - started


@pytest.mark.parametrize(
    ("action", "why"),
    [
        ({"spec": {"active": False}}, "was set inactive"),
        (None, "was deleted"),
    ],
    ids=["deactivated", "deleted"],
)
async def test_ending_a_pooled_session_ends_its_live_stream_within_seconds(
    api: KubeClient, namespace: str, pool_gateway: str, action: dict[str, Any] | None, why: str
) -> None:
    name = "end-" + ("off" if action else "gone")
    result, took = await _stream_then(api, namespace, pool_gateway, name, action)
    assert (result.close_code, result.close_reason) == (1000, "session ended")
    [error] = result.errors
    assert error["code"] == "session_ended"
    assert why in error["message"]
    assert took < 10.0, f"the stream ended {took:.1f} s after its session"
