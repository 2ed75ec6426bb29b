"""A TranscriptionSession's pod without Kubernetes: the operator's environment, real processes.

The operator builds the session's Deployment and ConfigMap; each container's environment is then
given, as the kubelet would, to a real ``earshot serve`` and a real ``earshot persister`` sharing a
spool directory, over real MariaDB and Redis. Only what a pod decides differently from a laptop is
replaced: the listen address and ports, the spool path, the Triton pool's address (the engine runs
in process) and the Secrets' values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.audio.codecs import Codec
from earshot.cli import demoing
from earshot.gateways.g711 import client
from earshot_operator import dataplane, gateways, manifests, resources
from earshot_operator.dataplane import Env
from earshot_operator.settings import OperatorSettings
from tests import gateway
from tests.persister import rows, stored_finals, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.integration

TOKEN = "pod-t0ken"
SESSION = {
    "apiVersion": resources.API_VERSION,
    "kind": "TranscriptionSession",
    "metadata": {"name": "call-42", "namespace": "tel", "uid": "u", "generation": 1},
    "spec": {
        "sessionId": "pbx:call-42",
        "userId": "alice",
        "idleTimeoutSeconds": 1,
        "language": "zh",
    },
}


def _container_environments(body: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Each container's environment as the operator specifies it (secrets by reference)."""
    settings = OperatorSettings()
    gateway = gateways.build(body, settings)
    configmap = manifests.build_configmap(gateway)["data"]
    deployment = manifests.build_deployment(gateway, settings=settings)
    environments: dict[str, dict[str, str]] = {}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        env: dict[str, str] = {}
        for entry in container["env"]:
            config = entry["valueFrom"].get("configMapKeyRef")
            value = configmap[config["key"]] if config else f"<secret {entry['name']}>"
            env[entry["name"]] = value
        environments[container["name"]] = env
    return environments


class Pod:
    """The two containers of a session's pod as local processes."""

    def __init__(self, workdir: Path, env: dict[str, dict[str, str]]) -> None:
        self.workdir = workdir
        self.env = env
        self.port = int(env[dataplane.GATEWAY_CONTAINER][Env.PORT])
        self.persister_port = int(env[dataplane.PERSISTER_CONTAINER][Env.PERSISTER_PORT])
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        """Start both containers' commands and wait until each answers its health endpoint."""
        commands = {
            dataplane.GATEWAY_CONTAINER: dataplane.SESSION_COMMAND,
            dataplane.PERSISTER_CONTAINER: dataplane.PERSISTER_COMMAND,
        }
        for name, command in commands.items():
            with (self.workdir / f"{name}.log").open("ab") as log:
                self.processes[name] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "earshot",
                    *command[1:],
                    env={**os.environ, **self.env[name]},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        await wait_until(lambda: self._healthy(self.port), 60.0, what=self.log("gateway"))
        await wait_until(
            lambda: self._healthy(self.persister_port), 60.0, what=self.log("persister")
        )

    async def _healthy(self, port: int) -> bool:
        for name, process in self.processes.items():
            if process.returncode is not None:
                raise AssertionError(f"{name} exited:\n{self.log(name)}")
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                return (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    def url(self, session_id: str) -> str:
        """The WebSocket URL of a session on the pod's gateway."""
        return f"ws://127.0.0.1:{self.port}" + dataplane.SESSION_WS_PATH.format(
            session_id=session_id
        )

    def log(self, name: str) -> str:
        """The end of one container's log."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    async def stop(self) -> None:
        """SIGTERM both (the persister drains what is spooled), then wait for them."""
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 30.0)
            except TimeoutError:
                process.kill()
                await process.wait()


def pod_environments(
    tmp_path: Path, tiny_model_cache: Path, redis_url: str, mysql_url: str
) -> dict[str, dict[str, str]]:
    """Each container's environment as the operator gives it, with this machine's local parts."""
    secrets = {Env.ACCESS_TOKEN: TOKEN, Env.PARTIALS_URL: redis_url, Env.SEGMENTS_URL: mysql_url}
    # what the pod decides differently from this machine: addresses, ports, paths, and the
    # Triton pool (none runs here: the same engine runs in process)
    local = {
        Env.HOST: "127.0.0.1",
        Env.PORT: str(free_port()),
        Env.PERSISTER_PORT: str(free_port()),
        Env.SPOOL_DIR: str(tmp_path / "spool"),
    }
    environments = _container_environments(SESSION)
    for name, env in environments.items():
        given = {variable for variable, value in env.items() if value.startswith("<secret")}
        assert given <= set(secrets), name
        env.update({variable: secrets[variable] for variable in given})
        env.update({variable: value for variable, value in local.items() if variable in env})
    environments[dataplane.GATEWAY_CONTAINER].update(
        {
            Env.TRITON_URL: "",
            "EARSHOT_DEMO_MODEL": "true",
            "EARSHOT_CACHE_DIR": str(tiny_model_cache),
        }
    )
    return environments


@pytest_asyncio.fixture
async def pod(
    tmp_path: Path, tiny_model_cache: Path, redis_url: str, mysql_url: str
) -> AsyncIterator[Pod]:
    environments = pod_environments(tmp_path, tiny_model_cache, redis_url, mysql_url)
    started = Pod(tmp_path, environments)
    try:
        await started.start()
        yield started
    finally:
        await started.stop()


async def _until_closed(
    url: str, send: list[bytes], *, token: str | None = TOKEN
) -> tuple[list[dict[str, object]], int | None, str]:
    return await gateway.until_closed(url, send, token=token)


async def test_the_sessions_pod_serves_its_session_for_its_user_and_refuses_the_rest(
    pod: Pod, mysql_url: str
) -> None:
    other, other_code, _ = await _until_closed(pod.url("pbx:call-43"), [b"\xd5" * 160])
    tokenless, tokenless_code, _ = await _until_closed(pod.url("pbx:call-42"), [], token=None)
    # speech without trailing silence: the last segment is still pending when the client stops
    received, code, reason = await _until_closed(pod.url("pbx:call-42"), _speech_to_the_end())

    assert (other_code, [m["code"] for m in other]) == (1008, ["session_not_served"])
    assert "serves only session 'pbx:call-42'" in str(other[0]["message"])
    assert (tokenless_code, [m["code"] for m in tokenless]) == (1008, ["unauthorized"])
    # the session's own stream runs until a second without frames ends it (idleTimeoutSeconds: 1)
    assert (code, reason, received[-1]["code"]) == (1000, "idle timeout", "idle_timeout")
    pending = received[-2]
    assert pending["type"] == "partial", (received, pod.log("gateway"))
    finals = [(m["seq"], m["text"]) for m in received if m["type"] == "final"]

    async def pending_stored() -> bool:
        return len(await stored_finals(mysql_url, "pbx:call-42")) > len(finals)

    await wait_until(pending_stored, 30.0, what=f"the pending final\n{pod.log('persister')}")
    stored = await stored_finals(mysql_url, "pbx:call-42")
    assert stored[: len(finals)] == finals
    assert stored[-1][0] == pending["seq"]
    assert stored[-1][1].startswith(str(pending["text"]))
    # spec.userId and spec.language are the session's row: its user and its declared language
    users = await rows(mysql_url, "SELECT id, user_id, language FROM sessions ORDER BY id")
    assert users == [("pbx:call-42", "alice", "zh")]


def _speech_to_the_end() -> list[bytes]:
    return client.frames_of(demoing.sample_audio(), codec=Codec.ALAW, rate=8000, frame_ms=20)


async def test_a_sigterm_mid_segment_tells_the_pending_final_then_closes_with_1012(
    pod: Pod, mysql_url: str
) -> None:
    """What the kubelet does when a gateway pod is deleted: the segment being spoken is
    recognised, stored and told, then the client is asked to reconnect; nothing is stored untold."""
    received: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with connect(pod.url("pbx:call-42"), additional_headers=headers) as ws:

        async def speak() -> None:
            # Speech without pauses long enough for the idle timeout, at real time.
            with contextlib.suppress(ConnectionClosed):
                while True:
                    for frame in _speech_to_the_end():
                        await ws.send(frame)
                        await asyncio.sleep(0.02)

        speaking = asyncio.create_task(speak())
        terminated = False
        try:
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    message = json.loads(raw)
                    received.append(message)
                    finals = sum(m["type"] == "final" for m in received)
                    if message["type"] == "partial" and finals > 0 and not terminated:
                        terminated = True
                        pod.processes[dataplane.GATEWAY_CONTAINER].send_signal(signal.SIGTERM)
        finally:
            speaking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaking
        code, reason = ws.close_code, ws.close_reason

    assert (code, reason) == (1012, "service restart"), (received, pod.log("gateway"))
    assert received[-1]["code"] == "shutting_down"
    last_partial = [m for m in received if m["type"] == "partial"][-1]
    assert received[-2] == {
        "type": "final",
        "text": received[-2]["text"],
        "seq": last_partial["seq"],
    }
    told = [(m["seq"], m["text"]) for m in received if m["type"] == "final"]
    assert [seq for seq, _ in told] == list(range(1, len(told) + 1))

    async def all_stored() -> bool:
        return len(await stored_finals(mysql_url, "pbx:call-42")) >= len(told)

    await wait_until(all_stored, 30.0, what=f"the told finals\n{pod.log('persister')}")
    assert await stored_finals(mysql_url, "pbx:call-42") == told
