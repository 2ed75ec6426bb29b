"""The persister sidecar's environment, checked from both sides.

From the persister's side: ``earshot persister`` runs here (real SQLite and memory stores, a real
spool a gateway journal wrote) on settings that record every field it reads. From the operator's
side: the persister container of each Deployment the operator builds. The container gets no
variable the persister does not read, and every variable the persister reads that the operator
configures for the pod (the spool, the stores, its address) reaches it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from earshot.events import Segment, SessionId
from earshot.persistence import journaling, sidecar
from earshot.settings import Settings
from earshot.storage import backends
from earshot.storage.memory import MemoryPartialStore
from earshot_operator import dataplane, gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests.servers import free_port

READ: set[str] = set()


class RecordingSettings(Settings):
    """Settings that note each field read after construction."""

    def __getattribute__(self, name: str) -> Any:
        if name in Settings.model_fields:
            READ.add(name)
        return super().__getattribute__(name)


def _variable(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    first = alias.choices[0]
    assert isinstance(first, str)
    return first


async def _spool_one_final(settings: Settings) -> SessionId:
    """What a gateway in sidecar mode leaves in the spool: a session and one final."""
    session = SessionId("call-1")
    segments = await backends.open_segment_store(settings.resolved_segments_url())
    try:
        async with journaling.open_journal(
            settings, partials=MemoryPartialStore(ttl_seconds=60), segments=segments
        ) as journal:
            seq = await journal.open_session(session, "alice")
            await journal.final(Segment(session, seq, "hello", datetime.now(UTC)))
            await journal.close_session(session, last_seq=seq)
    finally:
        await segments.aclose()
    return session


async def _persister_reads(tmp_path: Path) -> set[str]:
    """The settings fields ``earshot persister`` reads while it drains a final and stops."""
    stores = {
        "spool_dir": tmp_path / "spool",
        "segments_url": f"sqlite:///{tmp_path / 'seg.db'}",
        "cache_dir": tmp_path / "cache",
    }
    session = await _spool_one_final(Settings(persister="sidecar", **stores))  # type: ignore[arg-type]
    settings = RecordingSettings(persister_port=free_port(), **stores)  # type: ignore[arg-type]
    READ.clear()
    running = asyncio.create_task(sidecar.run(settings))
    segments = await backends.open_segment_store(str(stores["segments_url"]))
    try:
        for _ in range(400):
            if await segments.last_seq(session) == 1 or running.done():
                break
            await asyncio.sleep(0.025)
        assert await segments.last_seq(session) == 1, "the persister stored nothing"
    finally:
        await segments.aclose()
    os.kill(os.getpid(), signal.SIGTERM)  # the persister's own handler: drain, then stop
    await asyncio.wait_for(running, 30)
    return set(READ)


def _operator_env(body: dict[str, Any]) -> dict[str, set[str]]:
    settings = OperatorSettings()
    deployment = manifests.build_deployment(gateways.build(body, settings), settings=settings)
    return {
        c["name"]: {e["name"] for e in c["env"]}
        for c in deployment["spec"]["template"]["spec"]["containers"]
    }


SESSION = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TranscriptionSession",
    "metadata": {"name": "call-1", "namespace": "tel", "uid": "u"},
    "spec": {"userId": "alice"},
}
ROOM = {
    "apiVersion": "earshot.dev/v1alpha1",
    "kind": "TalkRoom",
    "metadata": {"name": "standup", "namespace": "talk", "uid": "u"},
    "spec": {
        "roomToken": "r00m",
        "hpbUrl": "wss://hpb.example/spreed",
        "nextcloudUrl": "https://cloud.example",
        "internalSecretRef": {"name": "hpb"},
    },
}


@pytest.mark.parametrize("body", [SESSION, ROOM], ids=["session", "room"])
async def test_the_persister_container_gets_exactly_what_the_persister_reads_of_the_pod(
    body: dict[str, Any], tmp_path: Path
) -> None:
    read = {_variable(field) for field in await _persister_reads(tmp_path)}
    containers = _operator_env(body)
    given = containers[dataplane.PERSISTER_CONTAINER]
    configured = set().union(*containers.values())

    assert given - read == set(), f"the persister is given {sorted(given - read)} and reads none"
    missing = (read & configured) - given
    assert missing == set(), f"the pod configures {sorted(missing)}, the persister reads them"
    # the spool and the stores are what it is for: a run that read them is a real run
    assert {dataplane.Env.SPOOL_DIR, dataplane.Env.SEGMENTS_URL} <= read
