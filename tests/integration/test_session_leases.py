"""One session, two gateway processes: the second is refused while the first streams it, and numbers
on from the first once it let go, through leases in the real Redis (issue 12, item 4).

Each gateway has its own spool and journal (its own lease holder), as two pods have; both share
Redis and MariaDB. The stores' lease contract is checked on the memory store and on Redis alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from earshot.events import SessionId
from earshot.gateways.g711 import serving
from earshot.gateways.g711.app import Services
from earshot.persistence import leasing
from earshot.settings import Settings
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import LeaseClaim, PartialStore
from earshot.storage.redis_partials import RedisPartialStore, lease_key
from tests.gateway import session_url
from tests.integration.scripted import CHUNK, heard, scripted_gateway, stored, until_closed

pytestmark = pytest.mark.integration

SAME = SessionId("same")


@dataclass(frozen=True)
class Gateway:
    """One of the two gateways: its base URL and its services."""

    base: str
    services: Services


@pytest_asyncio.fixture
async def two(
    tiny_model_cache: Path, tmp_path: Path, redis_url: str, mysql_url: str
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two scripted gateways (own spools, shared Redis and MariaDB); the first stores its finals
    (embedded persister), the second drains through a sidecar that never runs, so its finals stay
    in its spool."""

    def settings(spool: str, persister: Literal["embedded", "sidecar"]) -> Settings:
        return Settings(
            cache_dir=tiny_model_cache,
            partials_url=redis_url,
            segments_url=mysql_url,
            spool_dir=tmp_path / spool,
            persister=persister,
        )

    async with AsyncExitStack() as stack:
        gateways = []
        roles: tuple[tuple[str, Literal["embedded", "sidecar"]], ...] = (
            ("storing", "embedded"),
            ("spooling", "sidecar"),
        )
        for spool, persister in roles:
            opened = settings(spool, persister)
            services = await stack.enter_async_context(serving.open_services(opened))
            base, _ = await stack.enter_async_context(scripted_gateway(opened, services))
            gateways.append(Gateway(base, services))
        yield gateways[0], gateways[1]


async def test_a_session_streaming_through_one_gateway_is_refused_by_another(
    two: tuple[Gateway, Gateway],
) -> None:
    storing, spooling = two
    first, second, one = storing.base, spooling.base, storing.services
    async with connect(session_url(first, SAME)) as streaming:
        await streaming.send(CHUNK)
        assert await heard(streaming) == {"type": "partial", "text": "hearing", "seq": 1}
        async with connect(session_url(second, SAME)) as refused:
            told = await until_closed(refused)
        # The first stream goes on undisturbed.
        await streaming.send(CHUNK)
        assert await heard(streaming) == {"type": "partial", "text": "hearing", "seq": 1}
    assert told == [
        {
            "type": "error",
            "code": "session_in_use",
            "message": "session same is streaming through another gateway process; retry later",
            "retryable": True,
        }
    ]
    assert (refused.close_code, refused.close_reason) == (1013, "session in use")
    # Once the first connection ended (its final 1 stored, its lease released), the second
    # gateway numbers on.
    assert [seq for seq, _ in await stored(one, SAME, 1)] == [1]
    assert await _released(one) == 1
    async with connect(session_url(second, SAME)) as after:
        await after.send(CHUNK)
        assert await heard(after) == {"type": "partial", "text": "hearing", "seq": 2}


async def test_the_next_gateway_numbers_on_from_a_released_lease_before_the_stores_know(
    two: tuple[Gateway, Gateway],
) -> None:
    storing, spooling = two
    other = spooling.services
    # Through the gateway whose finals stay in its spool: final 1 is told, in no store.
    async with connect(session_url(spooling.base, SAME)) as ws:
        await ws.send(CHUNK)
        await heard(ws)
    assert await other.stores.segments.last_seq(SAME) == 0
    assert await other.stores.partials.last_seq(SAME) == 0
    assert await _released(other) == 1
    async with connect(session_url(storing.base, SAME)) as ws:
        await ws.send(CHUNK)
        assert await heard(ws) == {"type": "partial", "text": "hearing", "seq": 2}


async def test_a_stream_whose_lease_another_process_took_is_ended_and_stored(
    two: tuple[Gateway, Gateway], redis_url: str
) -> None:
    storing, _ = two
    async with connect(session_url(storing.base, SAME)) as ws:
        await ws.send(CHUNK)
        assert await heard(ws) == {"type": "partial", "text": "hearing", "seq": 1}
        # Its lease lapsed unseen (Redis unreachable past the TTL) and another process took it.
        async with Redis.from_url(redis_url) as redis:
            await redis.set(lease_key(SAME), "held:another-process")
        await storing.services.stores.journal.leases.renew()
        await ws.send(CHUNK)
        ended = await until_closed(ws)
    assert ended == [
        {
            "type": "error",
            "code": "session_taken_over",
            "message": "another gateway process took this session over (this one could not renew "
            "its lease in time); this connection ends and its last segment is stored",
            "retryable": False,
        }
    ]
    assert (ws.close_code, ws.close_reason) == (1000, "session taken over")
    assert [seq for seq, _ in await stored(storing.services, SAME, 1)] == [1]


async def _released(services: Services) -> int:
    """The last final number the session's released lease holds (it is released after the close
    frame goes out, so wait a little)."""
    probe = "probe"
    for _ in range(100):
        claim = await services.stores.partials.claim_session(SAME, probe, ttl_seconds=1.0)
        if claim.granted:
            await services.stores.partials.release_session(
                SAME, probe, last_seq=claim.released_seq, keep_seconds=60.0
            )
            return claim.released_seq
        await asyncio.sleep(0.05)
    raise AssertionError(f"the lease was never released: {claim}")


@pytest_asyncio.fixture(params=["memory", "redis"])
async def partials(request: pytest.FixtureRequest) -> AsyncIterator[PartialStore]:
    """Each partial store that holds leases."""
    store: PartialStore
    if request.param == "memory":
        store = MemoryPartialStore(ttl_seconds=60)
    else:
        store = RedisPartialStore.from_url(request.getfixturevalue("redis_url"), ttl_seconds=60)
    yield store
    await store.aclose()


async def test_a_lease_is_refused_to_another_holder_until_it_lapses(partials: PartialStore) -> None:
    assert await partials.claim_session(SAME, "a", ttl_seconds=0.3) == LeaseClaim(True, "a")
    assert await partials.claim_session(SAME, "b", ttl_seconds=0.3) == LeaseClaim(False, "a")
    await asyncio.sleep(0.4)  # "a" died: it renewed nothing
    assert (await partials.claim_session(SAME, "b", ttl_seconds=5.0)).granted
    # "a" comes back: its renewal finds "b" holding the session.
    assert await partials.renew_sessions([SAME], "a", ttl_seconds=5.0) == [SAME]
    assert await partials.renew_sessions([SAME], "b", ttl_seconds=5.0) == []


async def test_a_renewed_lease_outlives_its_first_ttl(partials: PartialStore) -> None:
    assert (await partials.claim_session(SAME, "a", ttl_seconds=0.4)).granted
    for _ in range(3):
        await asyncio.sleep(0.2)
        assert await partials.renew_sessions([SAME], "a", ttl_seconds=0.4) == []
    assert await partials.claim_session(SAME, "b", ttl_seconds=1.0) == LeaseClaim(False, "a")


async def test_a_released_lease_is_free_and_a_release_by_another_holder_changes_nothing(
    partials: PartialStore,
) -> None:
    assert (await partials.claim_session(SAME, "a", ttl_seconds=5.0)).granted
    await partials.release_session(SAME, "b", last_seq=9, keep_seconds=5.0)
    assert not (await partials.claim_session(SAME, "b", ttl_seconds=5.0)).granted
    await partials.release_session(SAME, "a", last_seq=3, keep_seconds=5.0)
    # A renewal of "a" still on its way after the release does not take the lease back.
    assert await partials.renew_sessions([SAME], "a", ttl_seconds=5.0) == []
    assert (await partials.claim_session(SAME, "b", ttl_seconds=5.0)).granted


async def test_leases_mark_a_session_another_process_took_as_lost(partials: PartialStore) -> None:
    mine = leasing.Leases(partials, holder="mine", lease_seconds=0.3)
    await mine.claim(SAME)
    await asyncio.sleep(0.4)
    assert (await partials.claim_session(SAME, "theirs", ttl_seconds=5.0)).granted
    assert not mine.lost(SAME)
    await mine.renew()
    assert mine.lost(SAME)
    with pytest.raises(leasing.SessionInUse, match="streaming through gateway theirs"):
        await mine.claim(SAME)
