"""The Redis partial store against a real, private redis-server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from earshot.events import Partial, SessionId
from earshot.storage import backends
from earshot.storage.ports import PartialStore, StorageError
from earshot.storage.redis_partials import RedisPartialStore
from tests.servers import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

SESSION = SessionId("call-1")
CURRENT = "asr:sess:call-1:current"
COUNTER = "asr:sess:call-1:seq"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def partial(seq: int, text: str) -> Partial:
    return Partial(session_id=SESSION, seq=seq, text=text, at=T0)


@pytest_asyncio.fixture
async def store(redis_url: str) -> AsyncIterator[PartialStore]:
    opened = backends.open_partial_store(redis_url, ttl_seconds=300)
    yield opened
    await opened.aclose()


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_redis_url_opens_the_redis_store(store: PartialStore) -> None:
    assert isinstance(store, RedisPartialStore)


async def test_partial_is_a_hash_with_content_seq_ts_and_a_ttl(
    store: PartialStore, redis: Redis
) -> None:
    await store.put_partial(partial(4, "你好 world"))

    assert await redis.hgetall(CURRENT) == {
        "content": "你好 world",
        "seq": "4",
        "ts": f"{T0.timestamp():.6f}",
    }
    assert 295 <= await redis.ttl(CURRENT) <= 300


async def test_each_partial_replaces_the_hash_and_restarts_the_ttl(
    store: PartialStore, redis: Redis
) -> None:
    await store.put_partial(partial(1, "hel"))
    await redis.expire(CURRENT, 10)
    await store.put_partial(partial(1, "hello"))

    assert await redis.hget(CURRENT, "content") == "hello"
    assert await redis.ttl(CURRENT) > 10


async def test_current_partial_reads_back_what_was_written(store: PartialStore) -> None:
    assert isinstance(store, RedisPartialStore)
    assert await store.current_partial(SESSION) is None
    await store.put_partial(partial(2, "read me"))
    assert await store.current_partial(SESSION) == partial(2, "read me")


async def test_commit_final_raises_the_counter_and_deletes_the_hash(
    store: PartialStore, redis: Redis
) -> None:
    assert await store.last_seq(SESSION) == 0
    await store.put_partial(partial(1, "hello"))

    await store.commit_final(SESSION, 1)

    assert await redis.exists(CURRENT) == 0
    assert await redis.get(COUNTER) == "1"
    assert await redis.ttl(COUNTER) == -1
    assert await store.last_seq(SESSION) == 1


async def test_counter_never_decreases_whatever_order_commits_arrive_in(
    store: PartialStore,
) -> None:
    seqs = list(range(1, 51))
    random.Random(7).shuffle(seqs)
    await asyncio.gather(*(store.commit_final(SESSION, seq) for seq in seqs))
    await store.commit_final(SESSION, 3)
    assert await store.last_seq(SESSION) == 50


async def test_replayed_commit_keeps_the_partial_of_a_later_segment(
    store: PartialStore, redis: Redis
) -> None:
    await store.commit_final(SESSION, 1)
    await store.put_partial(partial(2, "next"))
    await store.commit_final(SESSION, 1)
    assert await redis.hget(CURRENT, "content") == "next"


async def test_counter_written_by_the_older_server_is_continued(
    store: PartialStore, redis: Redis
) -> None:
    await redis.incrby(COUNTER, 7)
    assert await store.last_seq(SESSION) == 7
    await store.commit_final(SESSION, 8)
    assert await redis.get(COUNTER) == "8"


async def test_stopped_server_raises_storage_error_and_a_restart_recovers(
    store: PartialStore, redis_server: RedisServer
) -> None:
    await store.commit_final(SESSION, 1)
    redis_server.stop()

    with pytest.raises(StorageError, match=f"Redis partial store at {redis_server.url}"):
        await store.put_partial(partial(2, "lost"))
    with pytest.raises(StorageError):
        await store.commit_final(SESSION, 2)
    with pytest.raises(StorageError):
        await store.last_seq(SESSION)

    redis_server.start()
    # Redis runs without persistence here: the restarted server is empty.
    await store.commit_final(SESSION, 2)
    assert await store.last_seq(SESSION) == 2
