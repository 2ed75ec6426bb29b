"""A pool gateway follows the TranscriptionSessions registered with its pool through the API server.

One list, then one watch from the list's resourceVersion, for as long as the gateway runs; a watch
that ends is resumed, one that expired (410) or failed is replaced by a fresh list. Each change
updates the :class:`~earshot.gateways.g711.registrations.Registry`; a session that loses its
registration (its resource deleted, set inactive, or moved off this pool) is reported to
``on_ended`` with why, and the gateway ends its live stream. The gateway's role allows list and
watch on TranscriptionSessions and nothing else: it never reads a token, only its digest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from earshot.gateways.g711 import registrations
from earshot.gateways.g711.registrations import Registry
from earshot.settings import Settings

log = logging.getLogger(__name__)

COLLECTION = "/apis/earshot.dev/v1alpha1/transcriptionsessions"
#: The server holds a watch open this long at most; reads wait a little longer.
WATCH_SECONDS = 300
RETRY_SECONDS = 1.0
#: Told a registration was lost (a stream admitted under it must end), and why (for the client).
OnEnded = Callable[[registrations.Registration, str], None]


class FollowError(Exception):
    """The API server cannot be read (no credentials, refused, unreachable)."""


def in_cluster_http(settings: Settings) -> httpx.AsyncClient:
    """A client for the API server, authenticated by the mounted service account's token.

    Raises:
        FollowError: the token cannot be read.
    """
    folder = settings.service_account_dir
    try:
        token = (folder / "token").read_text().strip()
    except OSError as exc:
        raise FollowError(f"pool mode needs a service account token in {folder}: {exc}") from None
    ca = folder / "ca.crt"
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(ca)) if ca.is_file() else True
    )
    return httpx.AsyncClient(
        base_url=settings.kube_api_url,
        headers={"Authorization": f"Bearer {token}"},
        verify=verify,
        timeout=httpx.Timeout(10.0, read=WATCH_SECONDS + 30.0),
    )


class Follower:
    """Keeps a pool's registry in line with the TranscriptionSessions; owns its one task."""

    def __init__(
        self, http: httpx.AsyncClient, registry: Registry, *, settings: Settings, on_ended: OnEnded
    ) -> None:
        """Follow for the pool ``settings.pool`` (whose settings each session's build on)."""
        if settings.pool is None:
            raise ValueError("a follower needs a pool (EARSHOT_POOL)")
        self._http = http
        self._registry = registry
        self._pool = settings.pool
        self._base = settings
        self._on_ended = on_ended
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """List once (the gateway admits nobody before it knows the registrations), then watch.

        Raises:
            FollowError: the first list failed.
        """
        version = await self._list()
        self._task = asyncio.create_task(self._run(version), name=f"follow-pool-{self._pool}")

    async def stop(self) -> None:
        """Stop following and wait for the task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise

    async def _run(self, version: str) -> None:
        while True:
            try:
                version = await self._watch(version)
            except (FollowError, httpx.HTTPError, json.JSONDecodeError) as exc:
                log.warning(
                    "pool %s: watching sessions failed (%s); listing again", self._pool, exc
                )
                version = await self._relist()

    async def _relist(self) -> str:
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                return await self._list()
            except (FollowError, httpx.HTTPError) as exc:
                log.warning("pool %s: listing sessions failed: %s", self._pool, exc)

    async def _list(self) -> str:
        try:
            response = await self._http.get(COLLECTION)
        except httpx.HTTPError as exc:
            raise FollowError(f"cannot reach the API server: {exc}") from None
        body = _json(response)
        found = (self._parse(item) for item in body.get("items") or ())
        ended = self._registry.replace(r for r in found if r is not None)
        for lost in ended:
            self._on_ended(lost, f"it is no longer registered with pool {self._pool}")
        log.info("pool %s: %d sessions registered", self._pool, len(self._registry))
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        """Apply changes after ``version`` until the server ends the watch; the last version."""
        params = {
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async with self._http.stream("GET", COLLECTION, params=params) as response:
            if response.is_error:
                await response.aread()
                _json(response)
            async for line in response.aiter_lines():
                if line.strip():
                    version = self._apply(json.loads(line)) or version
        return version

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        kind, body = event.get("type"), event.get("object") or {}
        if kind == "ERROR":  # 410 Gone: the version expired
            raise FollowError(f"the watch ended: {body.get('message', body)}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            registration = None if kind == "DELETED" else self._parse(body)
            ended = self._registry.put(registrations.resource_of(body), registration)
            if ended is not None:
                self._on_ended(ended, _why(kind, body, self._pool))
        version = (body.get("metadata") or {}).get("resourceVersion")
        return str(version) if version else None

    def _parse(self, body: Mapping[str, Any]) -> registrations.Registration | None:
        return registrations.parse(body, pool=self._pool, base=self._base)


def _why(kind: object, body: Mapping[str, Any], pool: str) -> str:
    if kind == "DELETED" or (body.get("metadata") or {}).get("deletionTimestamp"):
        return "its TranscriptionSession was deleted"
    if not (body.get("spec") or {}).get("active", True):
        return "its TranscriptionSession was set inactive (spec.active: false)"
    return f"it is no longer registered with pool {pool}"


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise FollowError(f"the API server answered {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


@contextlib.asynccontextmanager
async def follow(settings: Settings, registry: Registry, on_ended: OnEnded) -> AsyncIterator[None]:
    """Keep ``registry`` current for ``settings.pool`` inside the block (listed before it starts).

    Raises:
        FollowError: no service account token, or the first list failed.
    """
    async with in_cluster_http(settings) as http:
        follower = Follower(http, registry, settings=settings, on_ended=on_ended)
        await follower.start()
        try:
            yield
        finally:
            await follower.stop()
