"""``python -m earshot_operator.uninstalling``: delete every session and room before an uninstall.

The chart runs this as its pre-delete hook Job, while the operator still runs: each deleted
TranscriptionSession and TalkRoom takes its gateway Deployment, Service, ConfigMap and Secret
with it (owner references: the garbage collector removes them). Transcripts already stored in
MySQL are kept, as is the evaluation MariaDB's volume. Resources carry no finalizer, so this
never waits on the operator; it waits until the resources are gone, or fails with their names.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator

from earshot_operator import resources
from earshot_operator.clients import KubeClient, path_of
from earshot_operator.running import connection_info
from earshot_operator.settings import OperatorSettings

logger = logging.getLogger("earshot_operator.uninstalling")


class UninstallError(Exception):
    """Resources were still there when the wait ended."""


def collections(settings: OperatorSettings) -> Iterator[str]:
    """The collection paths of both kinds: per watched namespace, or cluster-wide."""
    base = f"/apis/{resources.API_VERSION}"
    for kind in resources.KINDS.values():
        if not settings.namespaces:
            yield f"{base}/{kind.plural}"
        for namespace in settings.namespaces:
            yield f"{base}/namespaces/{namespace}/{kind.plural}"


async def remaining(client: KubeClient, settings: OperatorSettings) -> list[str]:
    """Every session and room still there, as ``Kind namespace/name``."""
    found = []
    for path in collections(settings):
        answer = await client.request("GET", path)
        found += [
            f"{item['kind']} {item['metadata']['namespace']}/{item['metadata']['name']}"
            for item in answer.get("items") or ()
        ]
    return found


async def delete_all(client: KubeClient, settings: OperatorSettings) -> int:
    """Delete every session and room, wait until none is left; how many there were.

    Raises:
        UninstallError: some are still there after ``settings.uninstall_timeout_seconds`` (a
            finalizer of someone else).
    """
    deleted = 0
    for path in collections(settings):
        answer = await client.request("GET", path)
        for item in answer.get("items") or ():
            meta = item["metadata"]
            # the owned objects go in the background, by the garbage collector
            await client.delete(
                path_of(
                    item["apiVersion"], item["kind"], namespace=meta["namespace"], name=meta["name"]
                )
            )
            deleted += 1
    timeout_s = settings.uninstall_timeout_seconds
    deadline = time.monotonic() + timeout_s
    while left := await remaining(client, settings):
        if time.monotonic() > deadline:
            raise UninstallError(f"still there after {timeout_s:.0f} s: {', '.join(left)}")
        await asyncio.sleep(1.0)
    return deleted


async def _main(settings: OperatorSettings) -> int:
    async with KubeClient.connect(connection_info()) as client:
        deleted = await delete_all(client, settings)
    logger.info("deleted %d TranscriptionSessions and TalkRooms", deleted)
    return deleted


def main() -> None:
    """Entry point of the hook: exit status 1 with the reason when resources remain."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_main(OperatorSettings()))
    except UninstallError as error:
        logger.error("%s", error)
        sys.exit(1)


if __name__ == "__main__":
    main()
