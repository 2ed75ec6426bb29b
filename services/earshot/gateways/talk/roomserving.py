"""Run a room's gateway: the process the operator starts for one TalkRoom (``earshot talk`` with
``EARSHOT_TALK_ROOM_TOKEN``).

It serves no AppAPI endpoint (Talk talks to the ExApp, which writes the TalkRoom); it attends its
room's call (:mod:`earshot.gateways.talk.attendance`) and serves ``/heartbeat`` (the process works),
``/ready`` (joined: 200, otherwise 503 with the state), ``/metrics`` and ``/api/v1/status`` (with
the room's access token as a Bearer token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import uvicorn
from aiortc import RTCIceServer
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from earshot.engines import loading
from earshot.gateways.talk import keeping, kubeapi
from earshot.gateways.talk.attendance import Attendance
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.gateways.talk.ownroom import OwnTalkRoom
from earshot.settings import Settings

log = logging.getLogger(__name__)

# How long a stopping room gateway may take to leave its call and say so in its TalkRoom (well
# within the pod's termination grace period).
_LEAVE_SECONDS = 8.0

IceServers = Callable[[], Awaitable[list[RTCIceServer]]]


class Attending:
    """The attendance and the task that runs it; the task ending means the process is broken."""

    def __init__(self, attendance: Attendance) -> None:
        self.attendance = attendance
        self.task: asyncio.Task[None] | None = None

    @property
    def broken(self) -> str:
        """Why attending stopped ("" while it runs)."""
        task = self.task
        if task is None or not task.done():
            return ""
        if task.cancelled():
            return "attending the room was cancelled"
        return f"attending the room failed: {task.exception()!r}"


def create_room_app(
    talk: TalkSettings, settings: Settings, rooms: Rooms, attending: Attending
) -> FastAPI:
    """The HTTP side of a room's gateway."""
    app = FastAPI(title=f"earshot room gateway {talk.room_token}")
    token = settings.access_token.get_secret_value() if settings.access_token else ""

    def state() -> dict[str, Any]:
        report = attending.attendance.report
        return {
            "roomToken": talk.room_token,
            "talkRoom": talk.talkroom_name,
            "state": str(report.state),
            "message": attending.broken or report.message,
            "speakers": report.speakers,
            "targets": report.targets,
        }

    @app.get("/heartbeat")
    async def heartbeat() -> Response:
        broken = attending.broken
        if not broken and rooms.journal is not None and not rooms.journal.healthy:
            broken = "the spool or its persister stopped working: transcripts are not kept"
        if broken:
            return JSONResponse({"status": "error", "error": broken}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        joined = attending.attendance.report.joined and not attending.broken
        return JSONResponse(state(), status_code=200 if joined else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/status")
    async def status(request: Request) -> Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "a valid Bearer token is needed"}, status_code=401)
        return JSONResponse({**state(), **rooms.status()})

    return app


async def serve(settings: Settings, talk: TalkSettings) -> None:
    """Attend the room and serve until interrupted (SIGTERM), leaving the call on the way out.

    Raises:
        kubeapi.ClusterError: the service account cannot be read.
        RuntimeError: attending the room failed (the process exits, Kubernetes restarts it).
    """
    async with AsyncExitStack() as stack:
        recognizer = await loading.open_recognizer(settings)
        stack.push_async_callback(recognizer.aclose)
        ice_servers: IceServers | None = None
        if talk.app_secret.get_secret_value():
            # STUN/TURN come from Talk's settings, which need the ExApp's AppAPI secret.
            nextcloud = Nextcloud(talk)
            stack.push_async_callback(nextcloud.aclose)
            ice_servers = nextcloud.ice_servers
        http = kubeapi.in_cluster_http(talk)
        stack.push_async_callback(http.aclose)
        talkroom = OwnTalkRoom(http, namespace=talk.namespace, name=talk.talkroom_name)

        def room_closed(token: str, reason: str) -> None:
            attendance.room_closed(token, reason)

        journal = await stack.enter_async_context(keeping.open_journal(settings))
        rooms = Rooms(
            talk,
            recognizer,
            ice_servers=ice_servers or _no_ice_servers,
            on_closed=room_closed,
            journal=journal,
        )
        stack.push_async_callback(rooms.aclose)
        attendance = Attendance(talk, rooms, talkroom)
        attending = Attending(attendance)
        server = uvicorn.Server(
            uvicorn.Config(
                create_room_app(talk, settings, rooms, attending),
                host=talk.app_host,
                port=talk.app_port,
                log_level=settings.log_level,
                lifespan="off",
            )
        )
        attending.task = asyncio.create_task(attendance.run(), name=f"room-{talk.room_token}")
        # On the way out: stop attending, then leave the call and report it (before the rooms
        # and the API client close).
        stack.push_async_callback(_bounded, attendance.leave_and_report, _LEAVE_SECONDS)
        stack.push_async_callback(_cancel, attending.task)
        # A broken attendance stops the server: the process exits and Kubernetes restarts it.
        attending.task.add_done_callback(lambda _: setattr(server, "should_exit", True))
        log.info(
            "earshot room gateway for room %s (TalkRoom %s/%s) on http://%s:%d, HPB %s",
            talk.room_token,
            talk.namespace,
            talk.talkroom_name,
            talk.app_host,
            talk.app_port,
            talk.signaling_url,
        )
        await server.serve()
        if attending.broken:
            raise RuntimeError(attending.broken)


async def _no_ice_servers() -> list[RTCIceServer]:
    return []


async def _bounded(work: Callable[[], Awaitable[None]], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await work()
    except TimeoutError:
        log.warning("could not leave the call and report it within %g s", seconds)


async def _cancel(task: asyncio.Task[None]) -> None:
    if task.done():
        return  # its end was reported by ``Attending.broken``
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
