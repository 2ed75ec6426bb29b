"""Deleting a resource never hangs: no finalizer, with or without the operator running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from earshot_operator.clients import KubeClient, path_of
from tests.e2e import helpers
from tests.e2e.controlplane.operators import OperatorProcess

pytestmark = pytest.mark.asyncio
KOPF_MARKER = "kopf.zalando.org/KopfFinalizerMarker"
BODIES = [helpers.session_body, helpers.room_body]
KINDS = pytest.mark.parametrize("make_body", BODIES, ids=["TranscriptionSession", "TalkRoom"])


def _path(body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return path_of(
        helpers.API_VERSION, body["kind"], namespace=meta["namespace"], name=meta["name"]
    )


async def _owned_gone(api: KubeClient, body: dict[str, Any]) -> bool:
    prefix = "tsess" if body["kind"] == "TranscriptionSession" else "troom"
    name = f"{prefix}-{body['metadata']['name']}"
    owned = await helpers.get_owned(api, body["metadata"]["namespace"], name, f"{name}-token")
    return all(obj is None for obj in owned.values())


async def _gone(api: KubeClient, body: dict[str, Any]) -> bool:
    return await helpers.resource(api, body) is None


@pytest.fixture
def stopped_operator(operator_process: OperatorProcess) -> Iterator[OperatorProcess]:
    """The operator stopped for the test's body and started again afterwards."""
    yield operator_process
    operator_process.stop()  # a no-op if stopped; a test that started it again owns no process
    operator_process.start()


@KINDS
async def test_a_handled_resource_carries_no_finalizer_and_is_deleted_at_once(
    api: KubeClient, namespace: str, make_body: Any
) -> None:
    body = make_body("gone-1", namespace)
    await api.create(body)
    await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Provisioning"), what="Provisioning"
    )
    await asyncio.sleep(3.0)  # past one drift check (interval 2 s): it adds nothing either
    current = await helpers.resource(api, body)
    assert current is not None
    assert current["metadata"].get("finalizers") is None

    await api.delete(_path(body))
    assert await helpers.resource(api, body) is None  # no finalizer: gone with the DELETE
    await helpers.eventually(lambda: _owned_gone(api, body), timeout_s=60, what="the GC")


@KINDS
async def test_a_resource_is_deleted_while_the_operator_is_down(
    api: KubeClient, namespace: str, make_body: Any, stopped_operator: OperatorProcess
) -> None:
    body = make_body("gone-2", namespace)
    await api.create(body)
    await helpers.eventually(
        lambda: helpers.phase_is(api, body, "Provisioning"), what="Provisioning"
    )
    await asyncio.to_thread(stopped_operator.stop)

    await api.delete(_path(body))
    await helpers.eventually(lambda: _gone(api, body), timeout_s=5, what="the deletion")
    await helpers.eventually(lambda: _owned_gone(api, body), timeout_s=60, what="the GC")


@KINDS
async def test_the_marker_an_older_operator_left_is_removed(
    api: KubeClient, namespace: str, make_body: Any, stopped_operator: OperatorProcess
) -> None:
    await asyncio.to_thread(stopped_operator.stop)
    body = make_body("marked-1", namespace)
    body["metadata"]["finalizers"] = [KOPF_MARKER]
    await api.create(body)
    await api.delete(_path(body))  # hangs on the marker while no operator runs
    held = await helpers.resource(api, body)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]

    await asyncio.to_thread(stopped_operator.start)
    await helpers.eventually(lambda: _gone(api, body), timeout_s=30, what="the marker removed")


async def test_the_marker_is_removed_from_a_live_resource_at_start(
    api: KubeClient, namespace: str, stopped_operator: OperatorProcess
) -> None:
    await asyncio.to_thread(stopped_operator.stop)
    body = helpers.session_body("marked-2", namespace)
    body["metadata"]["finalizers"] = [KOPF_MARKER, "example.com/keep"]
    await api.create(body)

    await asyncio.to_thread(stopped_operator.start)

    async def unmarked() -> dict[str, Any] | None:
        current = await helpers.resource(api, body)
        assert current is not None
        return current if KOPF_MARKER not in current["metadata"]["finalizers"] else None

    current = await helpers.eventually(unmarked, what="the marker removed")
    assert current["metadata"]["finalizers"] == ["example.com/keep"]  # others' stay
    await api.patch(_path(body), {"metadata": {"finalizers": None}})
