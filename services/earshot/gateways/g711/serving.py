"""Run the telephony gateway: open the engine and the stores from settings, serve, close them."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import uvicorn

from earshot.engines import loading
from earshot.gateways import lagging, stopping
from earshot.gateways.g711 import following, handshaking, workers
from earshot.gateways.g711.app import LiveSessions, Services, create_app
from earshot.gateways.g711.registrations import Registry
from earshot.gateways.g711.transcribing import GATEWAY, Stores
from earshot.persistence import journaling
from earshot.settings import Settings
from earshot.storage import backends

log = logging.getLogger(__name__)

# Frames above our own limit are refused by the handler with a precise message; uvicorn's own cap
# sits well above it so that it only guards against absurd frames.
_WS_MAX_SIZE_FACTOR = 4


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open the recogniser, both stores named by ``settings`` and the journal; close them on exit.

    Leaving the block seals the gateway's spool stream; with the embedded persister it first drains
    what is left (bounded by ``persister_shutdown_seconds``), so the stores then hold every final.
    """
    async with AsyncExitStack() as stack:
        partials = backends.open_partial_store(
            settings.partials_url, ttl_seconds=settings.partial_ttl_seconds
        )
        stack.push_async_callback(partials.aclose)
        segments = await backends.open_segment_store(settings.resolved_segments_url())
        stack.push_async_callback(segments.aclose)
        journal = await stack.enter_async_context(
            journaling.open_journal(settings, partials=partials, segments=segments)
        )
        recognizer = await loading.open_recognizer(settings)
        stack.push_async_callback(recognizer.aclose)
        yield Services(recognizer, Stores(partials, segments, journal))


class GatewayServer(stopping.Server):
    """uvicorn, but on shutdown (SIGTERM) the streams end first, each telling its client its last
    finals and closing with 1012; uvicorn's own shutdown would close them at once, and a final
    recognised after that would be stored without ever being told. While it serves, its lag
    monitor ticks."""

    def __init__(
        self, config: uvicorn.Config, sessions: LiveSessions, lag: lagging.LagMonitor
    ) -> None:
        """Serve ``config``, whose app streams the ``sessions`` and refuses by ``lag``."""
        super().__init__(config)
        self.sessions = sessions
        self.lag = lag

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve with the lag monitor running."""
        async with self.lag.running():
            await super().serve(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, drain the streams, then shut down as uvicorn does."""
        for server in self.servers:
            server.close()
        await self.sessions.drain()
        await super().shutdown(sockets)


def gateway_server(
    settings: Settings, services: Services, registry: Registry | None = None
) -> GatewayServer:
    """The uvicorn server of a gateway around opened services (a pool's: with its registry)."""
    sessions = LiveSessions()
    lag = lagging.for_gateway(
        GATEWAY,
        settings.max_lag_seconds,
        services.recognizer,
        streams=sessions.held,
        max_load=settings.max_inference_load,
    )
    return GatewayServer(uvicorn_config(settings, services, sessions, lag, registry), sessions, lag)


def uvicorn_config(
    settings: Settings,
    services: Services,
    sessions: LiveSessions | None = None,
    lag: lagging.LagMonitor | None = None,
    registry: Registry | None = None,
) -> uvicorn.Config:
    """The uvicorn configuration of a gateway around opened services."""
    return uvicorn.Config(
        create_app(settings, services, sessions, lag, registry),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # the process's logging (text or JSON) is configured by the command
        ws_max_size=settings.max_frame_bytes * _WS_MAX_SIZE_FACTOR,
        # Audio does not compress, and each deflate context holds hundreds of KiB per connection
        # (bench/reports/idle_connections.md): clients that offer it fall back to plain frames.
        ws_per_message_deflate=False,
        http=handshaking.protocol_class(settings.handshake_timeout_seconds),
        lifespan="off",
    )


def bind_socket(settings: Settings) -> socket.socket:
    """Bind and listen before serving, so the port (also a free one, port 0) is known up front and
    connections made before uvicorn starts wait in the backlog instead of being refused."""
    sock = socket.create_server(
        (settings.host, settings.port), backlog=2048, reuse_port=settings.reuse_port
    )
    sock.set_inheritable(True)
    return sock


async def serve(settings: Settings) -> int | None:
    """Serve until interrupted (SIGINT/SIGTERM), then close the services.

    With ``settings.workers`` above one, this process runs that many gateway processes on the port
    instead (:mod:`earshot.gateways.g711.workers`).

    Returns:
        The signal that stopped the server, or None when it stopped by itself.
    """
    if settings.workers > 1:
        return await workers.supervise(settings)
    # Bound first: a port in use fails before the model is loaded.
    with bind_socket(settings) as sock:
        return await _serve_on(sock, settings)


async def _serve_on(sock: socket.socket, settings: Settings) -> int | None:
    async with open_services(settings) as services, AsyncExitStack() as stack:
        registry = Registry() if settings.pool is not None else None
        server = gateway_server(settings, services, registry)
        if registry is not None:  # a pool's gateway knows its sessions before it admits any
            ending = server.sessions.end
            await stack.enter_async_context(following.follow(settings, registry, ending))
        log.info(
            "earshot gateway on ws://%s:%d/ws/transcribe/{session_id} (engine %s, spool %s, "
            "%s persister, segments in %s)",
            settings.host,
            sock.getsockname()[1],
            services.recognizer.name,
            settings.resolved_spool_dir(),
            settings.persister,
            settings.resolved_segments_url(),
        )
        await server.serve(sockets=[sock])
    return server.stopped_by
