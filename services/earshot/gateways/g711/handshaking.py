"""A handshake timeout for uvicorn's HTTP protocol: connections that never send a request go.

uvicorn times out idle keep-alive connections only after a first response; a client that opens a
TCP connection and sends nothing, or only part of its request, would hold a socket forever. The
protocol class made here closes such a connection once ``timeout_seconds`` pass before the request's
headers are complete (for a WebSocket, before the upgrade request is whole), and counts it in
``earshot_handshake_timeouts_total``.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from earshot import metrics

log = logging.getLogger(__name__)


def protocol_class(timeout_seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing connections whose request is late."""

    class HandshakeTimeoutProtocol(HttpToolsProtocol):
        _handshake_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._handshake_timer = self.loop.call_later(
                timeout_seconds, _expire, transport, timeout_seconds
            )

        def on_headers_complete(self) -> None:
            self._cancel_handshake_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_handshake_timer()
            super().connection_lost(exc)

        def _cancel_handshake_timer(self) -> None:
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None

    return HandshakeTimeoutProtocol


def _expire(transport: asyncio.Transport, timeout_seconds: float) -> None:
    if transport.is_closing():
        return
    metrics.HANDSHAKE_TIMEOUTS.inc()
    log.info(
        "closed a connection from %s: no complete request within %g s",
        transport.get_extra_info("peername"),
        timeout_seconds,
    )
    transport.close()
