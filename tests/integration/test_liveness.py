"""A wedged gateway fails its liveness probe: a real ``earshot serve``, the probe the kubelet sends.

The session's pod runs as in test_session_pod.py: the operator's environment given to real
processes. The gateway's liveness probe is taken from the operator's Deployment and sent as the
kubelet sends it: HTTP GET of its path on its port, failing on a status outside 200-399 or no answer
within ``timeoutSeconds``; ``failureThreshold`` failures in a row restart the container. Faults
enter the gateway process through tests/faults/sitecustomize.py: a signal handler that never
returns blocks its event loop; a flag file makes ``os.fsync`` hang, as on a disk that stopped
answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import pytest_asyncio

from earshot.persistence import writing
from earshot_operator import dataplane, gateways, manifests
from earshot_operator.dataplane import Env
from earshot_operator.settings import OperatorSettings
from tests import gateway
from tests.integration.test_session_pod import (
    SESSION,
    TOKEN,
    Pod,
    _speech_to_the_end,
    pod_environments,
)
from tests.persister import wait_until

pytestmark = pytest.mark.integration

FAULTS = Path(__file__).resolve().parents[1] / "faults"
SESSION_ID = "pbx:call-42"  # SESSION's
SPOOL_STALL_SECONDS = 5.0  # the gateway's EARSHOT_SPOOL_STALL_SECONDS here


@dataclass(frozen=True)
class LivenessProbe:
    """An httpGet liveness probe, sent as the kubelet sends it."""

    path: str
    port: int
    timeout_s: float
    failure_threshold: int

    async def succeeds(self) -> bool:
        """One probe: a status from 200 to 399 within the timeout."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                answer = await http.get(f"http://127.0.0.1:{self.port}{self.path}")
        except httpx.HTTPError:
            return False
        return 200 <= answer.status_code < 400

    async def restarts(self) -> bool:
        """Whether ``failure_threshold`` probes in a row fail: the kubelet restarts the container."""
        for _ in range(self.failure_threshold):
            if await self.succeeds():
                return False
        return True


def gateway_container() -> dict[str, Any]:
    """The gateway container the operator makes for SESSION (its probe is the one tested here)."""
    settings = OperatorSettings()
    deployment = manifests.build_deployment(gateways.build(SESSION, settings), settings=settings)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == dataplane.GATEWAY_CONTAINER]
    return dict(container)


@dataclass
class FaultyPod:
    """The session's pod with the fault injector in its gateway, and that gateway's probe."""

    pod: Pod
    faults: Path
    probe: LivenessProbe

    @property
    def gateway(self) -> asyncio.subprocess.Process:
        """The gateway container's process."""
        return self.pod.processes[dataplane.GATEWAY_CONTAINER]


@pytest_asyncio.fixture
async def faulty(
    tmp_path: Path, tiny_model_cache: Path, redis_url: str, mysql_url: str
) -> AsyncIterator[FaultyPod]:
    environments = pod_environments(tmp_path, tiny_model_cache, redis_url, mysql_url)
    faults = tmp_path / "faults"
    faults.mkdir()
    paths = [str(FAULTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    environments[dataplane.GATEWAY_CONTAINER].update(
        {
            "EARSHOT_TEST_FAULTS": str(faults),
            "PYTHONPATH": os.pathsep.join(paths),
            # below the default (writing.STALL_SECONDS): the hung disk test sees it honoured
            "EARSHOT_SPOOL_STALL_SECONDS": str(SPOOL_STALL_SECONDS),
        }
    )
    assert cast(dict[str, Any], SESSION["spec"])["sessionId"] == SESSION_ID
    container = gateway_container()
    liveness = container["livenessProbe"]
    [port] = [p for p in container["ports"] if p["name"] == liveness["httpGet"]["port"]]
    # the probed port is the one the process listens on (here a free port takes its place)
    assert port["containerPort"] == OperatorSettings().gateway_port
    pod = Pod(tmp_path, environments)
    probe = LivenessProbe(
        path=liveness["httpGet"]["path"],
        port=int(environments[dataplane.GATEWAY_CONTAINER][Env.PORT]),
        timeout_s=float(liveness["timeoutSeconds"]),
        failure_threshold=int(liveness["failureThreshold"]),
    )
    try:
        await pod.start()
        yield FaultyPod(pod, faults, probe)
    finally:
        (faults / "disk-hung").unlink(missing_ok=True)
        await pod.stop()


async def test_a_gateway_whose_event_loop_is_blocked_fails_its_liveness_probe(
    faulty: FaultyPod,
) -> None:
    assert await faulty.probe.succeeds()

    faulty.gateway.send_signal(signal.SIGUSR2)  # its handler never returns to the event loop

    started = time.monotonic()
    assert await faulty.probe.restarts()
    took = time.monotonic() - started
    # every probe waited its whole timeout: no answer at all, not an error answer
    assert took >= faulty.probe.failure_threshold * faulty.probe.timeout_s - 0.5
    assert faulty.gateway.returncode is None  # the process is up: only the probe tells
    faulty.gateway.kill()  # a blocked loop cannot run the SIGTERM handler either
    await faulty.gateway.wait()


async def test_a_gateway_whose_spool_disk_stopped_answering_fails_its_probe_and_recovers(
    faulty: FaultyPod,
) -> None:
    url = faulty.pod.url(SESSION_ID)
    assert await faulty.probe.succeeds()
    (faulty.faults / "disk-hung").touch()

    # a final needs an fsync: the stream's first final leaves the writer waiting on the disk
    streaming = asyncio.create_task(gateway.until_closed(url, _speech_to_the_end(), token=TOKEN))
    try:
        waiting = faulty.faults / "fsync-waiting"

        async def hung() -> bool:
            return waiting.exists()

        await wait_until(hung, 60.0, what=f"the writer's fsync\n{faulty.pod.log('gateway')}")
        hung_at = time.monotonic()
        assert await faulty.probe.succeeds()  # a slow disk is not a dead one

        async def restarted() -> bool:
            return await faulty.probe.restarts()

        await wait_until(restarted, SPOOL_STALL_SECONDS + 30, what="the probe failing")
        # the gateway's EARSHOT_SPOOL_STALL_SECONDS, not the default, decided when it failed
        assert SPOOL_STALL_SECONDS - 1 <= time.monotonic() - hung_at < writing.STALL_SECONDS
        async with httpx.AsyncClient(timeout=5) as http:
            health = await http.get(f"http://127.0.0.1:{faulty.probe.port}{faulty.probe.path}")
        assert health.status_code == 503
        assert health.json()["reason"] == "persistence stopped working"
        assert faulty.gateway.returncode is None

        (faulty.faults / "disk-hung").unlink()  # the disk answers again before the restart

        await wait_until(faulty.probe.succeeds, 30.0, what="the probe passing again")
        received, code, _ = await asyncio.wait_for(streaming, 60.0)
        assert any(m["type"] == "final" for m in received), received
        assert code == 1000
    finally:
        streaming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await streaming
