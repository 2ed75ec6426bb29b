"""A gateway's session leases when the partial store cannot be reached (earshot.persistence.leasing).

The store's own lease contract runs against memory and real Redis in
tests/integration/test_session_leases.py; here the store fails, as Redis does when it is down.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from earshot import metrics
from earshot.events import SessionId
from earshot.persistence import leasing
from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import LeaseClaim, StorageError

SESSION = SessionId("call-1")


class Unreachable(MemoryPartialStore):
    """A partial store whose lease calls fail (Redis is down)."""

    async def claim_session(
        self, session_id: SessionId, holder: str, *, ttl_seconds: float
    ) -> LeaseClaim:
        raise StorageError("redis is down")

    async def renew_sessions(
        self, session_ids: Sequence[SessionId], holder: str, *, ttl_seconds: float
    ) -> list[SessionId]:
        raise StorageError("redis is down")

    async def release_session(
        self, session_id: SessionId, holder: str, *, last_seq: int, keep_seconds: float
    ) -> None:
        raise StorageError("redis is down")


def _lease_errors() -> float:
    value: float = metrics.STORAGE_ERRORS.labels("leases")._value.get()
    return value


async def test_an_unreachable_store_lets_the_session_stream_unchecked_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    leases = leasing.Leases(Unreachable(ttl_seconds=60), holder="me")
    errors = _lease_errors()
    assert await leases.claim(SESSION) == 0
    await leases.renew()
    assert not leases.lost(SESSION)
    await leases.release(SESSION, last_seq=3)
    assert _lease_errors() == errors + 3
    messages = [r.getMessage() for r in caplog.records]
    assert "session call-1: lease not checked, partial store unreachable: redis is down" in messages
    assert "1 session leases not renewed: redis is down" in messages
    assert "session call-1: lease not released (it lapses in 15 s): redis is down" in messages


def test_process_holders_differ_between_two_leases_of_one_process() -> None:
    assert leasing.process_holder() != leasing.process_holder()
