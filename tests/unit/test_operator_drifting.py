"""The operator's own drift loop: every resource once per pass, one failure never ends the pass,
a loop that died makes the operator unhealthy. (tests/e2e run it against a real apiserver.)"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from earshot_operator import drifting, resources
from earshot_operator.clients import ApiError, KubeClient
from earshot_operator.settings import OperatorSettings


class Listing:
    """Answers list requests from a table of path -> items (or an exception to raise)."""

    def __init__(self, answers: Mapping[str, list[dict[str, Any]] | BaseException]) -> None:
        self.answers = answers
        self.paths: list[str] = []

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.paths.append(path)
        answer = self.answers.get(path, [])
        if isinstance(answer, BaseException):
            raise answer
        return {"items": answer}


def _item(name: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "tel", **meta}, "spec": {}}


def _loop(
    listing: Listing, seen: list[str], settings: OperatorSettings | None = None
) -> drifting.DriftLoop:
    async def reconcile(kind: resources.Kind, body: Mapping[str, Any]) -> None:
        seen.append(f"{body['kind']}/{body['metadata']['name']}")
        if body["metadata"]["name"] == "broken":
            raise RuntimeError("cannot build")

    return drifting.DriftLoop(
        cast(KubeClient, listing),
        settings=settings or OperatorSettings(drift_interval_seconds=0.01),
        reconcile=reconcile,
    )


SESSIONS = "/apis/earshot.dev/v1alpha1/transcriptionsessions"
ROOMS = "/apis/earshot.dev/v1alpha1/talkrooms"


async def test_a_pass_reconciles_every_live_resource_past_a_failing_one() -> None:
    listing = Listing(
        {
            SESSIONS: [_item("broken"), _item("a"), _item("gone", deletionTimestamp="t")],
            ROOMS: [_item("r")],
        }
    )
    seen: list[str] = []
    checked = await _loop(listing, seen).check_all()
    assert seen == ["TranscriptionSession/broken", "TranscriptionSession/a", "TalkRoom/r"]
    assert checked == 2  # the failing one is logged, not counted


async def test_watched_namespaces_are_listed_one_by_one() -> None:
    listing = Listing({})
    settings = OperatorSettings(namespaces=("tel", "talk"))
    await _loop(listing, [], settings).check_all()
    assert listing.paths == [
        "/apis/earshot.dev/v1alpha1/namespaces/tel/transcriptionsessions",
        "/apis/earshot.dev/v1alpha1/namespaces/talk/transcriptionsessions",
        "/apis/earshot.dev/v1alpha1/namespaces/tel/talkrooms",
        "/apis/earshot.dev/v1alpha1/namespaces/talk/talkrooms",
    ]


async def test_a_refused_list_is_retried_at_the_next_pass() -> None:
    listing = Listing({SESSIONS: ApiError(403, {"reason": "Forbidden"})})
    seen: list[str] = []
    loop = _loop(listing, seen)
    loop.start()
    await asyncio.sleep(0.1)
    assert loop.healthy
    assert listing.paths.count(SESSIONS) >= 2
    await loop.stop()


async def test_a_loop_that_died_is_unhealthy() -> None:
    listing = Listing({SESSIONS: RuntimeError("a bug")})
    loop = _loop(listing, [])
    assert loop.healthy
    loop.start()
    await asyncio.sleep(0.1)
    assert not loop.healthy
    with pytest.raises(RuntimeError, match="a bug"):
        await loop.stop()


async def test_a_pass_can_check_only_the_resources_it_selects() -> None:
    # what a pool whose state changed asks for: its sessions, not every resource
    on_pool = _item("on-pool") | {"status": {"placement": "pool/default"}}
    listing = Listing({SESSIONS: [_item("dedicated"), on_pool], ROOMS: [_item("r")]})
    seen: list[str] = []
    checked = await _loop(listing, seen).check_all(
        (resources.SESSION,),
        where=lambda body: (body.get("status") or {}).get("placement") == "pool/default",
    )
    assert (checked, seen) == (1, ["TranscriptionSession/on-pool"])
    assert listing.paths == [SESSIONS]


class InFlight:
    """A reconcile that counts how many run at once; ``hold`` keeps each one until cancelled."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.now = self.most = 0
        self.done: list[str] = []
        self.cancelled: list[str] = []
        self.entered = asyncio.Event()

    async def __call__(self, kind: resources.Kind, body: Mapping[str, Any]) -> None:
        name = body["metadata"]["name"]
        self.now += 1
        self.most = max(self.most, self.now)
        self.entered.set()
        try:
            for _ in range(3):  # a reconcile's requests, one after the other
                await asyncio.sleep(0)
            if self.hold:
                await asyncio.Event().wait()
            self.done.append(name)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.now -= 1


def _many(count: int) -> Listing:
    return Listing({SESSIONS: [_item(f"s{i}") for i in range(count)]})


async def test_a_pass_reconciles_up_to_its_limit_at_once_and_every_resource_once() -> None:
    reconcile = InFlight()
    loop = drifting.DriftLoop(
        cast(KubeClient, _many(10)), settings=OperatorSettings(), reconcile=reconcile, concurrency=3
    )
    assert await loop.check_all((resources.SESSION,)) == 10
    assert reconcile.most == 3
    assert sorted(reconcile.done) == sorted(f"s{i}" for i in range(10))


async def test_the_default_limit_is_small_and_a_pass_of_one_needs_one_worker() -> None:
    assert 1 < drifting.CONCURRENT_RECONCILES <= 8
    reconcile = InFlight()
    loop = drifting.DriftLoop(
        cast(KubeClient, _many(1)), settings=OperatorSettings(), reconcile=reconcile
    )
    assert await loop.check_all((resources.SESSION,)) == 1
    assert reconcile.most == 1
    with pytest.raises(ValueError, match="at least 1"):
        drifting.DriftLoop(
            cast(KubeClient, _many(1)), settings=OperatorSettings(), reconcile=reconcile,
            concurrency=0,
        )  # fmt: skip


async def test_cancelling_a_pass_cancels_and_awaits_its_reconciles_in_flight() -> None:
    reconcile = InFlight(hold=True)
    loop = drifting.DriftLoop(
        cast(KubeClient, _many(10)), settings=OperatorSettings(), reconcile=reconcile, concurrency=3
    )
    passing = asyncio.create_task(loop.check_all((resources.SESSION,)))
    await reconcile.entered.wait()
    for _ in range(5):  # let the other workers take their first resource
        await asyncio.sleep(0)
    passing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await passing
    assert sorted(reconcile.cancelled) == ["s0", "s1", "s2"]
    assert (reconcile.now, reconcile.done) == (0, [])
