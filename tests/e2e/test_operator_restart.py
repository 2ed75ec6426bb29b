"""Restarting the operator creates no duplicates and rewrites nothing that is already right."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from earshot_operator.clients import KubeClient
from tests.e2e import helpers
from tests.e2e.controlplane.operators import OperatorProcess

pytestmark = pytest.mark.asyncio


async def _versions(api: KubeClient, namespace: str) -> dict[str, str]:
    versions = {}
    for path in (
        f"/api/v1/namespaces/{namespace}/secrets",
        f"/api/v1/namespaces/{namespace}/configmaps",
        f"/api/v1/namespaces/{namespace}/services",
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
    ):
        selector = "app.kubernetes.io/managed-by=earshot-operator"
        for item in await helpers.list_items(api, path, selector=selector):
            key = f"{item['kind'] if 'kind' in item else path.rsplit('/', 1)[1]}/{item['metadata']['name']}"
            versions[key] = item["metadata"]["resourceVersion"]
    return versions


def _provisioning(
    api: KubeClient, body: dict[str, Any]
) -> Callable[[], Awaitable[dict[str, Any] | None]]:
    return lambda: helpers.phase_is(api, body, "Provisioning")


async def test_restart_creates_no_duplicates_and_changes_nothing(
    api: KubeClient, namespace: str, operator_process: OperatorProcess
) -> None:
    bodies = [helpers.session_body("s1", namespace), helpers.room_body("r1", namespace)]
    for body in bodies:
        await api.create(body)
    for body in bodies:
        await helpers.eventually(_provisioning(api, body))
    await asyncio.sleep(1.0)  # let the first reconciliations settle
    before = await _versions(api, namespace)
    assert len(before) == 8  # Secret, ConfigMap, Service, Deployment for each

    await asyncio.to_thread(operator_process.restart)
    await asyncio.sleep(5.0)  # resume handlers and at least one drift check (interval 2 s)

    assert await _versions(api, namespace) == before
    for body in bodies:
        current = await helpers.resource(api, body)
        assert current is not None
        assert current["status"]["phase"] == "Provisioning"
        assert current["status"]["counters"]["reconciles"] == 1
