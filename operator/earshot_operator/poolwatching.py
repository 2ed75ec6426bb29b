"""Whether each gateway pool can take a stream, read from its Deployment and pods by one loop.

A pooled session has no pod of its own: whether it can stream is whether its pool has a Ready
gateway (``diagnosing.from_pool``). Reading the pool on every reconcile would put API requests
on the path that makes a session Ready in milliseconds, so one loop reads each pool every
``pool_check_interval_seconds`` and keeps the answer; a reconcile uses the kept answer, reading
the pool itself only when there is none yet (the operator just started). When a pool's answer
changes (its pods stopped, or came back) the loop hands the pool to ``on_change``, which
reconciles the sessions placed on it: their status and a Warning event say so within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from earshot_operator import diagnosing, looping
from earshot_operator.clients import ApiError, KubeClient, path_of
from earshot_operator.settings import OperatorSettings, Pool

logger = logging.getLogger("earshot_operator.poolwatching")

#: Called with a pool whose answer changed.
OnChange = Callable[[Pool], Awaitable[object]]


class PoolWatch:
    """The latest answer of each checked pool (a pool whose settings name its Deployment)."""

    def __init__(
        self, client: KubeClient, *, settings: OperatorSettings, on_change: OnChange
    ) -> None:
        self._client = client
        self._pools = [pool for pool in settings.pools if pool.deployment_ref is not None]
        self._on_change = on_change
        self._known: dict[str, diagnosing.Diagnosis | None] = {}
        # How many times each pool's answer changed since the operator started.
        self._changes: dict[str, int] = {}
        self._reading = {pool.name: asyncio.Lock() for pool in self._pools}
        self._loop = looping.Periodic(
            "earshot-pools", interval_s=settings.pool_check_interval_seconds, step=self.check_all
        )

    def start(self) -> None:
        """Start the loop (its first pass comes one interval from now)."""
        self._loop.start()

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end."""
        await self._loop.stop()

    @property
    def healthy(self) -> bool:
        """False once the loop has ended by itself (the operator's /healthz then fails)."""
        return self._loop.healthy

    async def diagnose(self, pool: Pool) -> diagnosing.Diagnosis | None:
        """Why ``pool`` cannot take a stream now (None: it can, or it is not checked).

        Raises:
            ApiError, aiohttp.ClientError: the pool had no answer yet and cannot be read.
        """
        if pool.deployment_ref is None:
            return None
        if pool.name not in self._known:
            async with self._reading[pool.name]:  # the sessions resumed at start-up read once
                if pool.name not in self._known:
                    self._known[pool.name] = await self._read(pool)
        return self._known[pool.name]

    def changes(self, pool: Pool) -> int:
        """How many times ``pool``'s answer has changed: a reconcile that read the answer before
        a change must write its status again (the loop may have written the newer one first)."""
        return self._changes.get(pool.name, 0)

    async def check_all(self) -> list[Pool]:
        """Read every checked pool; hand each whose answer changed to ``on_change``."""
        changed = []
        for pool in self._pools:
            try:
                answer = await self._read(pool)
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("cannot read gateway pool %s: %s", pool.name, error)  # next pass
                continue
            known = self._known.get(pool.name)
            same_reason = pool.name in self._known and _reason(known) == _reason(answer)
            self._known[pool.name] = answer
            if same_reason:
                # Only the words changed (a back-off's delay, another stuck pod): the sessions'
                # reason stands, and relisting them all for it would flood the API and events.
                continue
            self._changes[pool.name] = self.changes(pool) + 1
            logger.info("gateway pool %s: %s", pool.name, answer or "a gateway is Ready")
            changed.append(pool)
            await self._on_change(pool)
        return changed

    async def _read(self, pool: Pool) -> diagnosing.Diagnosis | None:
        ref = pool.deployment_ref
        assert ref is not None
        namespace, name = ref
        deployment = await self._client.get(
            path_of("apps/v1", "Deployment", namespace=namespace, name=name)
        )
        pods: list[Mapping[str, Any]] = []
        ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
        if deployment is not None and not ready:
            pods = await self._pods(namespace, deployment)
        return diagnosing.from_pool(pool, deployment, pods=pods, now=datetime.now(UTC))

    async def _pods(self, namespace: str, deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        answer = await self._client.request(
            "GET", path_of("v1", "Pod", namespace=namespace), params={"labelSelector": selector}
        )
        items: list[Mapping[str, Any]] = answer.get("items") or []
        return items


def _reason(answer: diagnosing.Diagnosis | None) -> str | None:
    return answer.reason if answer is not None else None
