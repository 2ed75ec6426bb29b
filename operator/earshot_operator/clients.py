"""A small asynchronous client for the Kubernetes API (aiohttp), enough for the operator.

kopf brings aiohttp and its own login; this client reuses the same :class:`kopf.ConnectionInfo`
so the operator and its handlers authenticate identically (a service account token in a
cluster, a kubeconfig outside). It speaks plain JSON objects: the builders already make dicts.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import kopf

MERGE_PATCH = "application/merge-patch+json"

#: apiVersion/kind -> (path prefix, plural) for the objects the operator touches.
_PLURALS = {
    "v1/ConfigMap": "configmaps",
    "v1/Secret": "secrets",
    "v1/Service": "services",
    "v1/Event": "events",
    "v1/Pod": "pods",
    "apps/v1/Deployment": "deployments",
    "networking.k8s.io/v1/Ingress": "ingresses",
    "v1/ServiceAccount": "serviceaccounts",
    "rbac.authorization.k8s.io/v1/Role": "roles",
    "rbac.authorization.k8s.io/v1/RoleBinding": "rolebindings",
    "earshot.dev/v1alpha1/TranscriptionSession": "transcriptionsessions",
    "earshot.dev/v1alpha1/TalkRoom": "talkrooms",
}


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.reason = str(body.get("reason", ""))
        self.message = str(body.get("message", body))
        super().__init__(f"{status} {self.reason}: {self.message}")


class NotFoundError(ApiError):
    """The object does not exist (404)."""


class ConflictError(ApiError):
    """The object already exists, or was changed meanwhile (409)."""


def path_of(
    api_version: str,
    kind: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection (no name) or an object.

    Raises:
        KeyError: a kind this client does not know.
    """
    plural = _PLURALS[f"{api_version}/{kind}"]
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


def path_of_object(body: Mapping[str, Any], *, subresource: str | None = None) -> str:
    """The REST path of an object from its own apiVersion, kind and metadata."""
    meta = body["metadata"]
    return path_of(
        body["apiVersion"],
        body["kind"],
        namespace=meta.get("namespace"),
        name=meta["name"],
        subresource=subresource,
    )


class KubeClient:
    """JSON requests against one API server; use ``async with KubeClient.connect(info)``."""

    def __init__(self, session: aiohttp.ClientSession, server: str) -> None:
        self._session = session
        self._server = server.rstrip("/")

    @classmethod
    def connect(cls, info: kopf.ConnectionInfo) -> Self:
        """A client for the server and credentials in ``info`` (call inside an event loop)."""
        headers = {"Accept": "application/json", **info.as_http_headers()}
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=32)
        session = aiohttp.ClientSession(connector=connector, headers=headers)
        return cls(session, info.server)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._session.close()

    async def get(self, path: str, *, cached: bool = False) -> dict[str, Any] | None:
        """The object at ``path``, or None if it does not exist.

        ``cached`` reads the API server's watch cache (resourceVersion=0) instead of etcd:
        cheaper, possibly a little stale.
        """
        try:
            return await self.request(
                "GET", path, params={"resourceVersion": "0"} if cached else None
            )
        except NotFoundError:
            return None

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``body`` in its namespace; ConflictError if it exists."""
        meta = body["metadata"]
        path = path_of(body["apiVersion"], body["kind"], namespace=meta.get("namespace"))
        return await self.request("POST", path, body=body)

    async def patch(
        self, path: str, body: Mapping[str, Any], *, content_type: str = MERGE_PATCH
    ) -> dict[str, Any]:
        """Patch the object at ``path`` (a JSON merge patch unless told otherwise)."""
        return await self.request("PATCH", path, body=body, content_type=content_type)

    async def delete(self, path: str) -> None:
        """Delete the object at ``path``; nothing happens if it is already gone."""
        try:
            await self.request("DELETE", path)
        except NotFoundError:
            return

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One request; the decoded JSON answer, or an ApiError subclass."""
        async with self._session.request(
            method,
            self._server + path,
            json=body,
            params=params,
            headers={"Content-Type": content_type} if body is not None else None,
        ) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            if response.status == 404:
                raise NotFoundError(response.status, answer)
            if response.status == 409:
                raise ConflictError(response.status, answer)
            if response.status >= 400:
                raise ApiError(response.status, answer)
            return answer


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=info.ca_path)
    elif info.ca_data:
        context.load_verify_locations(cadata=_text(info.ca_data))
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(info.certificate_path, info.private_key_path)
    elif info.certificate_data and info.private_key_data:
        _load_chain_from_data(context, info.certificate_data, info.private_key_data)
    return context


def _load_chain_from_data(context: ssl.SSLContext, cert: str | bytes, key: str | bytes) -> None:
    # ssl only loads client certificates from files: write them to a private temporary folder
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder, "tls.crt"), Path(folder, "tls.key")
        cert_path.write_text(_text(cert))
        key_path.write_text(_text(key))
        context.load_cert_chain(cert_path, key_path)


def _text(data: str | bytes) -> str:
    # kubeconfig *-data fields are base64 of PEM; kopf passes them through as they were read
    raw = data.encode() if isinstance(data, str) else data
    if raw.lstrip().startswith(b"-----"):
        return raw.decode()
    return base64.b64decode(raw).decode()
