"""The Talk image's health probe: ``GET /heartbeat`` where the ExApp really listens.

The image's HEALTHCHECK runs ``python -m earshot.gateways.talk.probing``. It reads the same
:class:`TalkSettings` the server does, so it follows ``APP_PORT`` (AppAPI chooses the port) and,
under HaRP (``HP_SHARED_KEY``), asks on the unix socket instead. Exit status 0: healthy.
"""

from __future__ import annotations

import http.client
import socket
import sys

from earshot.gateways.talk.configuration import TalkSettings

TIMEOUT_SECONDS = 3.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=TIMEOUT_SECONDS)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_SECONDS)
        self.sock.connect(self._path)


def connection(settings: TalkSettings) -> http.client.HTTPConnection:
    """A connection to where the ExApp of these settings listens."""
    if settings.harp:
        return _UnixConnection(settings.harp_socket)
    host = "127.0.0.1" if settings.app_host in ("0.0.0.0", "") else settings.app_host
    return http.client.HTTPConnection(host, settings.app_port, timeout=TIMEOUT_SECONDS)


def probe(settings: TalkSettings) -> str:
    """Why the ExApp is not healthy ("" when it is)."""
    link = connection(settings)
    try:
        link.request("GET", "/heartbeat")
        status = link.getresponse().status
    except OSError as exc:
        return f"no answer from the ExApp: {exc}"
    finally:
        link.close()
    return "" if status == 200 else f"/heartbeat answered {status}"


def main() -> int:
    """Probe once; print why not when unhealthy."""
    problem = probe(TalkSettings())
    if problem:
        print(problem, file=sys.stderr)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
