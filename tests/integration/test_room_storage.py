"""A TalkRoom's ``spec.storage`` decides where its calls are kept, on real MariaDB and Redis.

The operator builds the room's Deployment; each container's environment is resolved as the
kubelet resolves it (the ConfigMap, and Secrets that hold the URLs of real servers). The room
gateway's journal (the one ``earshot talk`` keeps calls with) spools a call's finals with the
gateway container's settings, and a real ``earshot persister`` started with the persister
container's environment stores them. They land in the store the TalkRoom names, not in the
operator's default one. What a pod has of its own is replaced: the spool (its volume: a folder
here) and the persister's port (its network namespace: a free port here).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from earshot.gateways.talk import keeping
from earshot.settings import Settings
from earshot_operator import dataplane, gateways, manifests
from earshot_operator.settings import OperatorSettings
from tests.persister import PersisterProcess, rows, stored_finals, wait_until
from tests.servers import MariaDbServer

ROOM = "r00m"


def room(storage: dict[str, Any] | None) -> dict[str, Any]:
    spec = {
        "roomToken": ROOM,
        "hpbUrl": "wss://hpb.example/spreed",
        "nextcloudUrl": "https://cloud.example",
        "internalSecretRef": {"name": "hpb"},
    }
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {"name": "standup", "namespace": "talk", "uid": "u"},
        "spec": {**spec, **({"storage": storage} if storage else {})},
    }


def environments(
    body: dict[str, Any], secrets: dict[tuple[str, str], str]
) -> dict[str, dict[str, str]]:
    """Each container's environment, resolved from the ConfigMap and ``secrets``."""
    settings = OperatorSettings()
    gateway = gateways.build(body, settings)
    config = manifests.build_configmap(gateway)["data"]
    deployment = manifests.build_deployment(gateway, settings=settings)
    resolved: dict[str, dict[str, str]] = {}
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        env: dict[str, str] = {}
        for entry in container["env"]:
            source = entry["valueFrom"]
            if "configMapKeyRef" in source:
                env[entry["name"]] = config[source["configMapKeyRef"]["key"]]
            else:
                ref = source["secretKeyRef"]
                env[entry["name"]] = secrets[(ref["name"], ref["key"])]
        resolved[container["name"]] = env
    return resolved


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The gateway container's settings, from exactly its environment."""
    for name in list(os.environ):
        if name.startswith("EARSHOT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


async def keep_a_call(settings: Settings) -> str:
    """The room gateway's part: spool two finals of a call; returns the call's session id."""
    async with keeping.open_journal(settings) as journal:
        call = await keeping.CallTranscript.open(journal, ROOM)
        now = datetime.now(UTC)
        for speaker, text in (("alice", "hello there"), ("bob", "good morning")):
            call.add(
                speaker=speaker, text=text, started_at=now - timedelta(seconds=2), ended_at=now
            )
        await call.close()
        await journal.close_session(call.session_id, last_seq=2)
    return call.session_id


@pytest.fixture
def other_database(mariadb_server: MariaDbServer, mysql_url: str) -> Iterator[str]:
    """A second fresh database on the same server (the operator's default store)."""
    name = mysql_url.rsplit("/", 1)[1] + "_default"
    url = mariadb_server.create_database(name)
    yield url
    mariadb_server.drop_database(name)


async def test_a_talkrooms_storage_fields_name_where_its_calls_are_kept(
    mysql_url: str,
    other_database: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    room_redis = redis_url.removesuffix("/0") + "/1"
    secrets = {
        ("earshot-storage", "redis-url"): redis_url,
        ("earshot-storage", "mysql-url"): other_database,
        ("room-stores", "redis"): room_redis,
        ("room-stores", "mysql"): mysql_url,
        ("hpb", "internal-secret"): "hpb-secret",
        ("troom-standup-token", "token"): "t0ken",
    }
    storage = {
        "redisUrlSecretRef": {"name": "room-stores", "key": "redis"},
        "mysqlUrlSecretRef": {"name": "room-stores", "key": "mysql"},
    }
    env = environments(room(storage), secrets)
    spool = {dataplane.Env.SPOOL_DIR: str(tmp_path / "spool")}

    session = await keep_a_call(
        settings_from({**env[dataplane.GATEWAY_CONTAINER], **spool}, monkeypatch)
    )
    persister = PersisterProcess(
        tmp_path, spool_dir=tmp_path / "spool", segments_url="", partials_url=""
    )
    persister.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_")},
        **env[dataplane.PERSISTER_CONTAINER],
        **spool,
        dataplane.Env.HOST: "127.0.0.1",
        dataplane.Env.PERSISTER_PORT: str(persister.port),
    }
    await persister.start()
    try:

        async def stored() -> bool:
            return len(await stored_finals(mysql_url, session)) == 2

        await wait_until(stored, 30, what=f"the call's finals\n{persister.log_tail()}")
    finally:
        assert await persister.stop() == 0, persister.log_tail()

    assert await stored_finals(mysql_url, session) == [(1, "hello there"), (2, "good morning")]
    assert await rows(mysql_url, "SELECT speaker FROM segments ORDER BY segment_seq") == [
        ("alice",),
        ("bob",),
    ]
    assert await rows(other_database, "SHOW TABLES") == []  # the default store was not touched
    counters = [f"asr:sess:{session}:seq"]
    async with aioredis.from_url(room_redis) as named, aioredis.from_url(redis_url) as default:
        assert await named.get(counters[0]) == b"2"
        assert await default.exists(*counters) == 0


def test_without_storage_fields_a_room_uses_the_operators_stores() -> None:
    secrets = {
        ("earshot-storage", "redis-url"): "redis://default:6379/0",
        ("earshot-storage", "mysql-url"): "mysql://root@default/earshot",
        ("hpb", "internal-secret"): "hpb-secret",
        ("troom-standup-token", "token"): "t0ken",
    }
    for container in environments(room(None), secrets).values():
        assert container[dataplane.Env.PARTIALS_URL] == "redis://default:6379/0"
        assert container[dataplane.Env.SEGMENTS_URL] == "mysql://root@default/earshot"
