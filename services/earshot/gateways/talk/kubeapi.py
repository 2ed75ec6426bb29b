"""The Kubernetes API as seen from a Talk process: a service account's token, CA and server.

Both the ExApp in cluster mode (it creates TalkRooms) and a room's gateway (it follows its own
TalkRoom) talk to the API server with plain HTTP; this is the one place their client is made.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from earshot.gateways.talk.configuration import TalkSettings

#: A watch is held open by the server for up to this long; reads wait a little longer.
WATCH_SECONDS = 300


class ClusterError(Exception):
    """The API server refused or failed a request."""


def in_cluster_http(settings: TalkSettings) -> httpx.AsyncClient:
    """A client authenticated by the service account mounted in ``settings.service_account_dir``.

    Raises:
        ClusterError: the token or the CA certificate cannot be read.
    """
    folder = Path(settings.service_account_dir)
    try:
        token = (folder / "token").read_text().strip()
    except OSError as exc:
        raise ClusterError(f"no service account token in {folder}: {exc}") from None
    ca = folder / "ca.crt"
    if not ca.is_file():
        raise ClusterError(f"no CA certificate {ca}")
    return httpx.AsyncClient(
        base_url=settings.kube_api_url,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=httpx.Timeout(10.0, read=WATCH_SECONDS + 30.0),
    )


def raise_for(response: httpx.Response) -> None:
    """Raise :class:`ClusterError` with the server's answer when ``response`` is an error."""
    if response.is_error:
        raise ClusterError(f"the API server answered {response.status_code}: {response.text[:300]}")
