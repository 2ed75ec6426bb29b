"""Which pooled session holds a session id: the oldest active claimant, handed on when it goes."""

from __future__ import annotations

from typing import Any

from earshot_operator import claiming
from earshot_operator.claiming import Claim, SessionClaims
from earshot_operator.settings import OperatorSettings, Pool

POOL = Pool(name="default", address="pool.earshot:8000", engine="paraformer")
SETTINGS = OperatorSettings(pools=(POOL,), default_placement="default")
KEY = ("default", "pbx:1")


def _session(name: str, created: str, namespace: str = "calls", **spec: Any) -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": namespace,
        "creationTimestamp": created,
        "uid": f"uid-{name}",
    }
    return {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": meta,
        "spec": {"sessionId": "pbx:1", "userId": "alice", **spec},
    }


def _claim(name: str, created: str, *, waiting: bool = True) -> tuple[claiming.Key, Claim]:
    return KEY, Claim(created, waiting, f"calls/{name}", f"uid-{name}")


def test_an_active_pooled_session_claims_its_pool_and_session_id() -> None:
    body = _session("a", "2026-12-04T10:00:00Z")
    assert claiming.claim_of(body, SETTINGS) == _claim("a", "2026-12-04T10:00:00Z")
    body["status"] = {"registration": {"pool": "default", "sessionId": "pbx:1"}}
    registered = _claim("a", "2026-12-04T10:00:00Z", waiting=False)
    assert claiming.claim_of(body, SETTINGS) == registered
    # the same id in another namespace claims the same: the pool's gateways know ids, not namespaces
    elsewhere = claiming.claim_of(
        _session("a", "2026-12-04T10:00:01Z", namespace="other"), SETTINGS
    )
    assert elsewhere is not None
    assert elsewhere[0] == KEY
    claims = SessionClaims()
    claims.update("calls/a", registered)
    assert claims.taken_from(elsewhere) == registered[1]


def test_an_ended_deleting_dedicated_or_invalid_session_claims_nothing() -> None:
    created = "2026-12-04T10:00:00Z"
    deleting = _session("a", created)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-04T10:01:00Z"
    for body in (
        _session("a", created, active=False),
        deleting,
        _session("a", created, placement={"dedicated": True}),
        _session("a", created, placement={"pool": "elsewhere"}),  # no such pool: InvalidSpec
    ):
        assert claiming.claim_of(body, SETTINGS) is None, body


def test_the_oldest_claimant_holds_the_id_and_the_rest_are_told_when_it_changes_hands() -> None:
    claims = SessionClaims()
    first, second, third = (
        _claim("b", "2026-12-04T10:00:00Z"),
        _claim("c", "2026-12-04T10:00:05Z"),
        _claim("a", "2026-12-04T10:00:09Z"),
    )
    assert claims.update("calls/b", first) == set()
    assert claims.changes == 1  # b holds the id
    assert claims.update("calls/c", second) == set()  # b still holds it: nobody to tell
    assert claims.taken_from(second) == first[1]
    assert claims.taken_from(first) is None
    assert claims.update("calls/a", third) == set()
    assert claims.update("calls/c", second) == set()  # an event that changes no claim
    assert claims.changes == 1
    # the deletion of an earlier object named b (another uid) drops nothing
    assert claims.forget("calls/b", "uid-of-an-older-b") == set()
    assert claims.holder(KEY) == first[1]
    # b is deleted: c, the next oldest, holds the id; a (and c) are reconciled again
    assert claims.forget("calls/b", "uid-b") == {"calls/c", "calls/a"}
    assert claims.holder(KEY) == second[1]
    assert claims.taken_from(third) == second[1]
    assert claims.changes == 2
    # a claimant older than the holder, seen late (a resumed operator): the id changes hands
    late = _claim("z", "2026-12-04T09:59:00Z")
    assert claims.update("calls/z", late) == {"calls/c", "calls/a"}
    assert claims.taken_from(second) == late[1]
    # the holder takes another id: the old id goes to the next in line, the new one is its own
    moved = (("default", "pbx:2"), late[1])
    assert claims.update("calls/z", moved) == {"calls/c", "calls/a"}
    assert claims.holder(("default", "pbx:2")) == late[1]
    assert claims.holder(KEY) == second[1]


def test_within_one_second_a_registered_claim_keeps_the_id_else_the_first_by_name() -> None:
    same_second = "2026-12-04T10:00:00Z"
    claims = SessionClaims()
    claims.update("calls/b", _claim("b", same_second))
    claims.update("calls/a", _claim("a", same_second))
    assert claims.taken_from(_claim("b", same_second)) == _claim("a", same_second)[1]
    # b registered first (a came later in that second): b keeps it, a waits
    claims = SessionClaims()
    registered_b = _claim("b", same_second, waiting=False)
    claims.update("calls/b", registered_b)
    assert claims.update("calls/a", _claim("a", same_second)) == set()
    assert claims.holder(KEY) == registered_b[1]
    assert claims.taken_from(_claim("a", same_second)) == registered_b[1]
    assert claims.taken_from(registered_b) is None
