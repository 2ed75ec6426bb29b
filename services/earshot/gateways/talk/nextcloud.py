"""Requests from the ExApp to Nextcloud: init progress, Talk's signaling settings (STUN/TURN) and
TaskProcessing (the translator), all with the AppAPI-signed client this module owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from aiortc import RTCIceServer

from earshot.gateways.talk import appapi
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.taskprocessing import TaskProcessing

log = logging.getLogger(__name__)

SIGNALING_SETTINGS = "/ocs/v2.php/apps/spreed/api/v3/signaling/settings"
# AppAPI knows the app from the signed headers; ``apps/status/{app_id}`` is deprecated.
INIT_STATUS = "/ocs/v1.php/apps/app_api/ex-app/status"


class Nextcloud:
    """A client of the Nextcloud server that runs us; owns its HTTP client and its init task."""

    def __init__(
        self, settings: TalkSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        headers = appapi.sign(
            app_id=settings.app_id,
            app_version=settings.app_version,
            aa_version=settings.aa_version,
            app_secret=settings.app_secret.get_secret_value(),
        )
        self._http = httpx.AsyncClient(
            base_url=settings.nextcloud_url,
            headers=headers,
            verify=not settings.skip_cert_verify,
            timeout=10.0,
            transport=transport,
        )
        self._init: asyncio.Task[None] | None = None

    async def report_progress(self, progress: int, *, error: str = "") -> None:
        """Tell AppAPI how far initialisation is (0..100; 100 enables the app)."""
        body: dict[str, Any] = {"progress": progress}
        if error:
            body["error"] = error
        response = await self._http.put(INIT_STATUS, json=body)
        response.raise_for_status()

    def start_init(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Run ``ready`` in the background, reporting 0 before and 100 (or the error) after."""
        if self._init is not None and not self._init.done():
            return
        self._init = asyncio.create_task(self._initialise(ready), name="exapp-init")

    async def wait_init(self) -> None:
        """Wait for a running initialisation to report its end."""
        if self._init is not None:
            await self._init

    def task_processing(self) -> TaskProcessing:
        """The translator that goes through this Nextcloud's TaskProcessing."""
        s = self._settings
        return TaskProcessing(
            self._http,
            app_id=s.app_id,
            poll_seconds=s.translation_poll_seconds,
            timeout_seconds=s.translation_timeout_seconds,
            languages_ttl_seconds=s.translation_languages_ttl_seconds,
        )

    async def ice_servers(self) -> list[RTCIceServer]:
        """STUN and TURN servers from Talk's signaling settings (none when they cannot be had)."""
        try:
            response = await self._http.get(SIGNALING_SETTINGS)
            response.raise_for_status()
            data = response.json()["ocs"]["data"]
        except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
            log.warning("no STUN/TURN servers from Nextcloud: %r", exc)
            return []
        servers = [RTCIceServer(urls=s["urls"]) for s in data.get("stunservers", [])]
        servers += [
            RTCIceServer(urls=t["urls"], username=t.get("username"), credential=t.get("credential"))
            for t in data.get("turnservers", [])
        ]
        return servers

    async def aclose(self) -> None:
        """Stop initialising and close the HTTP client."""
        if self._init is not None:
            self._init.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._init
        await self._http.aclose()

    async def _initialise(self, ready: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.report_progress(0)
            await ready()
            await self.report_progress(100)
        except httpx.HTTPError as exc:
            log.error("could not report init progress to Nextcloud: %r", exc)
        except Exception as exc:
            log.exception("initialisation failed")
            with contextlib.suppress(httpx.HTTPError):
                await self.report_progress(0, error=str(exc))
