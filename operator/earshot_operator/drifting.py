"""The operator's own drift check: every resource is reconciled again at an interval.

kopf's timers could do this, but kopf puts its finalizer on every resource a timer or daemon runs
on, so each deletion then waits for a running operator, and hangs for good without one. This
loop needs no finalizer: a deleted resource goes at once and the garbage collector takes the
objects it owns. The loop is one task, started and stopped by its owner (kopf's startup and
cleanup handlers); one failing resource is logged and the pass goes on to the next. A pass over
some resources only (the sessions of a pool whose state changed) is the same check.

A reconcile is a few API requests one after the other (about three for a pooled session), so a
pass reconciles up to :data:`CONCURRENT_RECONCILES` resources at once: a pool whose gateways
stopped does not make its last session wait for every other one's requests in turn, while the
API server never sees more than that many of the operator's reconciles in flight
(``bench/operator_scale.py --pool-change`` times it). The workers are tasks of one
task group the pass owns: stopping the loop cancels them and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp

from earshot_operator import looping, resources
from earshot_operator.clients import ApiError, KubeClient
from earshot_operator.settings import OperatorSettings

logger = logging.getLogger("earshot_operator.drifting")

#: Resources a pass reconciles at once (each reconcile's requests stay one after the other).
CONCURRENT_RECONCILES = 4

#: Reconcile one resource of a kind again, counting what it changes as drift repairs.
Reconcile = Callable[[resources.Kind, Mapping[str, Any]], Awaitable[None]]


class DriftLoop:
    """Re-reconciles every TranscriptionSession and TalkRoom each ``drift_interval_seconds``."""

    def __init__(
        self,
        client: KubeClient,
        *,
        settings: OperatorSettings,
        reconcile: Reconcile,
        concurrency: int = CONCURRENT_RECONCILES,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._client = client
        self._settings = settings
        self._reconcile = reconcile
        self._concurrency = concurrency
        self._loop = looping.Periodic(
            "earshot-drift", interval_s=settings.drift_interval_seconds, step=self.check_all
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

    async def check_all(
        self,
        kinds: Iterable[resources.Kind] = resources.KINDS.values(),
        *,
        where: Callable[[Mapping[str, Any]], bool] = lambda _: True,
    ) -> int:
        """One pass over every resource of ``kinds`` that ``where`` selects; returns how many
        were reconciled (a pool's sessions, when the pool's state changed: ``where``)."""
        selected = [
            (kind, body) for kind in kinds async for body in self._listed(kind) if where(body)
        ]
        pending = iter(selected)
        checked: list[int] = []

        async def work() -> None:
            for kind, body in pending:  # shared: each resource goes to the first free worker
                checked.append(await self._check(kind, body))

        async with asyncio.TaskGroup() as workers:
            for index in range(min(self._concurrency, len(selected))):
                workers.create_task(work(), name=f"earshot-drift-worker-{index}")
        return sum(checked)

    async def _listed(self, kind: resources.Kind) -> AsyncIterator[Mapping[str, Any]]:
        for path in self._collections(kind):
            try:
                answer = await self._client.request("GET", path)
            except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                logger.warning("cannot list %s: %s", path, error)  # next pass retries
                continue
            for body in answer.get("items") or ():
                yield body

    async def _check(self, kind: resources.Kind, body: Mapping[str, Any]) -> int:
        if body["metadata"].get("deletionTimestamp"):
            return 0  # being deleted: leave it to the garbage collector
        full = {"apiVersion": resources.API_VERSION, "kind": kind.kind, **body}
        try:
            await self._reconcile(kind, full)
        except Exception:  # one resource's failure must not end the check of the others
            meta = body["metadata"]
            logger.exception("drift check of %s %s/%s failed", kind.kind, *_where(meta))
            return 0
        return 1

    def _collections(self, kind: resources.Kind) -> Iterator[str]:
        base = f"/apis/{resources.API_VERSION}"
        if not self._settings.namespaces:
            yield f"{base}/{kind.plural}"
            return
        for namespace in self._settings.namespaces:
            yield f"{base}/namespaces/{namespace}/{kind.plural}"


def _where(meta: Mapping[str, Any]) -> tuple[str, str]:
    return str(meta.get("namespace", "")), str(meta.get("name", ""))
