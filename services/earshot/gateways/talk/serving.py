"""Run the Talk gateway: open the engine and the clients from settings, serve the ExApp, close.

Deployed by HaRP (``HP_SHARED_KEY`` set) the ExApp serves on HaRP's unix socket and runs frpc
(:mod:`earshot.gateways.talk.harp`); otherwise it serves on ``APP_HOST:APP_PORT``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import uvicorn

from earshot.engines import loading
from earshot.gateways import stopping
from earshot.gateways.talk import harp, keeping, roomserving
from earshot.gateways.talk.app import Services, create_app
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.gateways.talk.talkrooms import KubernetesTalkRooms
from earshot.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_services(settings: Settings, talk: TalkSettings) -> AsyncIterator[Services]:
    """Open the recogniser, the Nextcloud client and the journal that keeps calls' transcripts or,
    in a cluster (where room gateways caption and keep), the TalkRoom client."""
    async with AsyncExitStack() as stack:
        recognizer = await loading.open_recognizer(settings)
        stack.push_async_callback(recognizer.aclose)
        nextcloud = Nextcloud(talk)
        stack.push_async_callback(nextcloud.aclose)
        talkrooms, journal = None, None
        if talk.in_cluster:
            talkrooms = KubernetesTalkRooms.in_cluster(talk)
            stack.push_async_callback(talkrooms.aclose)
        else:
            journal = await stack.enter_async_context(keeping.open_journal(settings))
        # In a cluster the room gateways caption, not this process: nothing to translate here.
        translator = None if talk.in_cluster else nextcloud.task_processing()
        rooms = Rooms(
            talk,
            recognizer,
            ice_servers=nextcloud.ice_servers,
            translator=translator,
            journal=journal,
        )
        stack.push_async_callback(rooms.aclose)
        yield Services(rooms=rooms, nextcloud=nextcloud, talkrooms=talkrooms)


def uvicorn_config(talk: TalkSettings, services: Services, *, log_level: str) -> uvicorn.Config:
    """The uvicorn configuration of the ExApp around opened services (HaRP: on its socket)."""
    app = create_app(talk, services)
    if talk.harp:
        return uvicorn.Config(
            app, uds=talk.harp_socket, log_level=log_level, log_config=None, lifespan="off"
        )
    return uvicorn.Config(
        app,
        host=talk.app_host,
        port=talk.app_port,
        log_level=log_level,
        log_config=None,  # the process's logging (text or JSON) is configured by the command
        lifespan="off",
    )


async def serve(settings: Settings, talk: TalkSettings) -> None:
    """Serve until interrupted (SIGINT/SIGTERM); leaving every room on the way out.

    With ``EARSHOT_TALK_ROOM_TOKEN`` set this is a room's gateway instead (``roomserving``).
    """
    if talk.room_mode:
        await roomserving.serve(settings, talk)
        return
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings, talk))
        server = stopping.Server(uvicorn_config(talk, services, log_level=settings.log_level))
        frpc = await _start_frpc(talk, stack) if talk.harp else None
        if frpc is not None and frpc.exited is not None:
            # Without frpc HaRP cannot reach us: stop, and let the daemon restart the container.
            frpc.exited.add_done_callback(lambda _: setattr(server, "should_exit", True))
        log.info(
            "earshot Talk ExApp %s on %s (engine %s, HPB %s, cluster %s)",
            talk.app_id,
            f"unix:{talk.harp_socket} (HaRP)"
            if talk.harp
            else f"http://{talk.app_host}:{talk.app_port}",
            settings.engine,
            talk.signaling_url,
            talk.in_cluster,
        )
        await server.serve()
        if frpc is not None and frpc.exited is not None and frpc.exited.done():
            raise harp.FrpUnavailable(frpc.exited.result())


async def _start_frpc(talk: TalkSettings, stack: AsyncExitStack) -> harp.FrpClient:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(talk.harp_socket)  # left by a previous run: uvicorn cannot bind over it
    workdir = Path(tempfile.mkdtemp(prefix="earshot-frpc-"))
    frpc = harp.FrpClient(talk, workdir=workdir)
    await frpc.start()
    stack.push_async_callback(frpc.aclose)
    return frpc
