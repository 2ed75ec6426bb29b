"""``helm uninstall``'s pre-delete hook, as the chart renders it, against a real apiserver.

No kubelet runs here, so the hook's container runs as a process: its command and environment
from the rendered Job, logged in with the token of the rendered hook ServiceAccount, bound to the
rendered ClusterRole: a verb the chart's role lacks fails the test.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.chart.charts import find, template
from tests.e2e import helpers
from tests.e2e.controlplane.cluster import REPO, ControlPlane, write_kubeconfig
from tests.e2e.controlplane.operators import OperatorProcess, service_account_token

pytestmark = pytest.mark.asyncio


def _path(body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return path_of(
        helpers.API_VERSION, body["kind"], namespace=meta["namespace"], name=meta["name"]
    )


def _release_namespace(watched: str) -> str:
    # one per test: a namespace being deleted cannot be created again at once
    return f"{watched}-release"


def _hook_objects(watched: str, values: dict[str, str]) -> list[dict[str, Any]]:
    sets = {"operator.watchNamespaces[0]": watched, **values}
    rendered = template(release="rel", namespace=_release_namespace(watched), sets=sets)
    hooks = [m for m in rendered if (m["metadata"].get("annotations") or {}).get("helm.sh/hook")]
    assert {m["kind"] for m in hooks} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
    }
    assert all(m["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for m in hooks)
    return hooks


def _run_hook(
    plane: ControlPlane, watched: str, tmp_path: Path, values: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    hooks = _hook_objects(watched, values or {})
    release_namespace = _release_namespace(watched)
    plane.kubectl("create", "namespace", release_namespace)
    try:
        access = [hook for hook in hooks if hook["kind"] != "Job"]
        plane.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": access}),
        )
        job = find(hooks, "Job", "-uninstall")
        pod = job["spec"]["template"]["spec"]
        token = service_account_token(plane, release_namespace, pod["serviceAccountName"])
        kubeconfig = tmp_path / "hook.kubeconfig"
        write_kubeconfig(kubeconfig, server=plane.server, ca=plane.ca, user={"token": token})
        [container] = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert container["command"][:2] == ["python", "-m"]
        return subprocess.run(
            [sys.executable, *container["command"][1:]],
            env={
                **os.environ,
                **env,
                "KUBECONFIG": str(kubeconfig),
                "PYTHONPATH": str(REPO / "operator"),
            },
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        plane.kubectl("delete", "namespace", release_namespace, "--wait=false")
        for kind in ("clusterrole", "clusterrolebinding"):
            plane.kubectl("delete", kind, "rel-earshot-uninstall", "--ignore-not-found")


@pytest.fixture(params=["operator running", "operator down"])
def operator_state(
    request: pytest.FixtureRequest, operator_process: OperatorProcess
) -> Iterator[str]:
    """Whether the operator runs while the hook does: with "operator down" it is stopped by the
    test once its resources are provisioned, and started again afterwards."""
    yield str(request.param)
    if request.param == "operator down":
        operator_process.stop()  # a no-op when the test already stopped it
        operator_process.start()


async def test_the_uninstall_hook_deletes_every_session_and_room_and_their_gateways(
    api: KubeClient,
    namespace: str,
    control_plane: ControlPlane,
    tmp_path: Path,
    operator_process: OperatorProcess,
    operator_state: str,
) -> None:
    bodies = [helpers.session_body("s1", namespace), helpers.room_body("r1", namespace)]
    for body in bodies:
        await api.create(body)
    for body in bodies:
        await helpers.eventually(functools.partial(helpers.phase_is, api, body, "Provisioning"))
    if operator_state == "operator down":  # crashed, or scaled to 0 before the uninstall
        await asyncio.to_thread(operator_process.stop)
        assert not operator_process.running

    done = await asyncio.to_thread(_run_hook, control_plane, namespace, tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    for body in bodies:
        assert await helpers.resource(api, body) is None
    assert "deleted 2 TranscriptionSessions and TalkRooms" in done.stderr

    async def owned_gone() -> bool:
        found = [
            await helpers.get_owned(api, namespace, name, f"{name}-token")
            for name in ("tsess-s1", "troom-r1")
        ]
        return all(obj is None for owned in found for obj in owned.values())

    await helpers.eventually(owned_gone, timeout_s=60, what="the garbage collector")


async def test_the_hook_waits_the_charts_timeout_and_names_what_another_finalizer_holds(
    api: KubeClient, namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    held = helpers.session_body("held-1", namespace)
    held["metadata"]["finalizers"] = ["example.com/keep"]  # another controller's, never removed
    await api.create(held)
    values = {"uninstall.timeoutSeconds": "10"}

    started = time.monotonic()
    done = await asyncio.to_thread(_run_hook, control_plane, namespace, tmp_path, values)
    waited = time.monotonic() - started

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"still there after 10 s: TranscriptionSession {namespace}/held-1" in done.stderr
    assert 10 <= waited < 60  # the chart's value, not the operator's default of 120 s
    current = await helpers.resource(api, held)
    assert current is not None
    assert current["metadata"]["deletionTimestamp"]
    await api.patch(_path(held), {"metadata": {"finalizers": None}})
