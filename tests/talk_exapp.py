"""The Talk ExApp for tests: uvicorn on a free port, AppAPI headers, a Nextcloud double (with
TaskProcessing from :mod:`tests.taskprocessing_double`: by default one without a provider)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn

from earshot.gateways.talk.app import Services, create_app
from earshot.gateways.talk.configuration import TalkSettings
from tests.servers import free_port
from tests.taskprocessing_double import TaskProcessingDouble

APP_SECRET = "app-secret"


def appapi_headers(
    *, secret: str = APP_SECRET, app_id: str = "live_transcription", user: str = "admin"
) -> dict[str, str]:
    """The headers AppAPI sends with every request to an ExApp."""
    return {
        "AA-VERSION": "3.0.0",
        "EX-APP-ID": app_id,
        "EX-APP-VERSION": "0.1.0",
        "AUTHORIZATION-APP-API": base64.b64encode(f"{user}:{secret}".encode()).decode(),
        "AA-REQUEST-ID": "req-1",
    }


@dataclass
class NextcloudDouble:
    """Answers the ExApp's requests to Nextcloud in memory (an httpx transport) and records them."""

    requests: list[httpx.Request] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)
    taskprocessing: TaskProcessingDouble = field(
        default_factory=lambda: TaskProcessingDouble(APP_SECRET, provider=False)
    )

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "PUT" and request.url.path == "/ocs/v1.php/apps/app_api/ex-app/status":
            self.progress.append(json.loads(request.content)["progress"])
            return httpx.Response(200, json={"ocs": {"meta": {"status": "ok"}, "data": []}})
        if request.url.path == "/ocs/v2.php/apps/spreed/api/v3/signaling/settings":
            data = {"server": "", "stunservers": [], "turnservers": []}
            return httpx.Response(200, json={"ocs": {"meta": {"status": "ok"}, "data": data}})
        return httpx.Response(404)

    def transport(self) -> httpx.AsyncBaseTransport:
        return _Routed(self)


class _Routed(httpx.AsyncBaseTransport):
    """TaskProcessing requests to its double, the others to Nextcloud's."""

    def __init__(self, double: NextcloudDouble) -> None:
        self._double = double
        self._taskprocessing = double.taskprocessing.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "/taskprocessing/" not in request.url.path:
            return self._double.handle(request)
        self._double.requests.append(request)
        return await self._taskprocessing.handle_async_request(request)


@asynccontextmanager
async def running_exapp(settings: TalkSettings, services: Services) -> AsyncIterator[str]:
    """Serve the ExApp until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, services),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the ExApp did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
