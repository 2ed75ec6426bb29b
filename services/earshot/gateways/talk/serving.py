"""Run the Talk gateway: open the engine and the clients from settings, serve the ExApp, close."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import uvicorn

from earshot.engines import loading
from earshot.gateways import stopping
from earshot.gateways.talk import roomserving
from earshot.gateways.talk.app import Services, create_app
from earshot.gateways.talk.configuration import TalkSettings
from earshot.gateways.talk.hosting import Rooms
from earshot.gateways.talk.nextcloud import Nextcloud
from earshot.gateways.talk.talkrooms import KubernetesTalkRooms
from earshot.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_services(settings: Settings, talk: TalkSettings) -> AsyncIterator[Services]:
    """Open the recogniser, the Nextcloud client and, in a cluster, the TalkRoom client."""
    async with AsyncExitStack() as stack:
        recognizer = await loading.open_recognizer(settings)
        stack.push_async_callback(recognizer.aclose)
        nextcloud = Nextcloud(talk)
        stack.push_async_callback(nextcloud.aclose)
        talkrooms = None
        if talk.in_cluster:
            talkrooms = KubernetesTalkRooms.in_cluster(talk)
            stack.push_async_callback(talkrooms.aclose)
        rooms = Rooms(talk, recognizer, ice_servers=nextcloud.ice_servers)
        stack.push_async_callback(rooms.aclose)
        yield Services(rooms=rooms, nextcloud=nextcloud, talkrooms=talkrooms)


def uvicorn_config(talk: TalkSettings, services: Services, *, log_level: str) -> uvicorn.Config:
    """The uvicorn configuration of the ExApp around opened services."""
    return uvicorn.Config(
        create_app(talk, services),
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
    async with open_services(settings, talk) as services:
        server = stopping.Server(uvicorn_config(talk, services, log_level=settings.log_level))
        log.info(
            "earshot Talk ExApp %s on http://%s:%d (engine %s, HPB %s, cluster %s)",
            talk.app_id,
            talk.app_host,
            talk.app_port,
            settings.engine,
            talk.signaling_url,
            talk.in_cluster,
        )
        await server.serve()
