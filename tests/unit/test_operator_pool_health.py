"""A pooled session is Ready only while its pool has a Ready gateway; else it says why, from the
pool's Deployment and pods (the same reading as a dedicated gateway's), and the loop that keeps
each pool's answer hands a pool whose answer changed on, so its sessions are told within seconds.

The loop's API server is a table of answers here; tests/e2e/test_pool_health.py runs the operator
against a real one, tests/cluster/test_pool_warnings.py against a real kubelet.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import pytest

from earshot_operator import (
    claiming,
    diagnosing,
    drifting,
    events,
    handlers,
    poolwatching,
    reconciling,
    statuses,
)
from earshot_operator.clients import ApiError, ConflictError, KubeClient
from earshot_operator.settings import OperatorSettings, Pool

POOL = Pool(name="default", address="p.earshot.svc:8000", deployment="earshot/earshot-pool-default")
UNCHECKED = Pool(name="plain", address="q.earshot.svc:8000")
DEPLOYMENT_PATH = "/apis/apps/v1/namespaces/earshot/deployments/earshot-pool-default"
PODS_PATH = "/api/v1/namespaces/earshot/pods"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SELECTOR = {"app.kubernetes.io/instance": "earshot", "app.kubernetes.io/component": "pool-default"}


def _deployment(ready: int, *, replicas: int = 2, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "earshot-pool-default", "namespace": "earshot"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": SELECTOR}},
        "status": {"readyReplicas": ready, **status} if ready else status,
    }


def _pod(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": status,
    }


def _pulling(name: str) -> dict[str, Any]:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "x:0"'}
    return _pod(name, containerStatuses=[{"name": "gateway", "state": {"waiting": waiting}}])


# --- what a pool's Deployment and pods say --------------------------------------------------------


def test_a_pool_with_one_ready_gateway_can_take_a_stream() -> None:
    assert diagnosing.from_pool(POOL, _deployment(1), pods=[_pulling("other")], now=NOW) is None


def test_a_missing_pool_deployment_is_named() -> None:
    assert diagnosing.from_pool(POOL, None, pods=[], now=NOW) == diagnosing.Diagnosis(
        "PoolMissing", "gateway pool default: Deployment earshot/earshot-pool-default not found"
    )


def test_a_pool_without_ready_gateways_gives_its_stuck_pods_cause() -> None:
    diagnosis = diagnosing.from_pool(
        POOL, _deployment(0), pods=[_pulling("earshot-pool-default-a")], now=NOW
    )
    assert diagnosis == diagnosing.Diagnosis(
        "ImagePullBackOff",
        "gateway pool default has no Ready gateway (0 of 2): container gateway of pod "
        'earshot-pool-default-a: Back-off pulling image "x:0"',
    )


def test_an_unschedulable_pool_says_why_no_node_fits() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 node(s) didn't match node selector.",
    }
    diagnosis = diagnosing.from_pool(
        POOL, _deployment(0), pods=[_pod("a", conditions=[condition])], now=NOW
    )
    assert diagnosis is not None
    assert diagnosis.reason == "Unschedulable"
    assert diagnosis.message.endswith("1 node(s) didn't match node selector.")


def test_pods_the_deployment_may_not_create_are_its_replica_failure() -> None:
    failure = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": 'pods "earshot-pool-default-a" is forbidden: exceeded quota',
    }
    diagnosis = diagnosing.from_pool(POOL, _deployment(0, conditions=[failure]), pods=[], now=NOW)
    assert diagnosis == diagnosing.Diagnosis(
        "FailedCreate",
        "gateway pool default has no Ready gateway (0 of 2): "
        'pods "earshot-pool-default-a" is forbidden: exceeded quota',
    )


@pytest.mark.parametrize("replicas", [0, 2])
def test_no_ready_gateway_and_no_stuck_pod_is_still_unavailable(replicas: int) -> None:
    starting = _pod("a", containerStatuses=[{"name": "gateway", "state": {"running": {}}}])
    diagnosis = diagnosing.from_pool(
        POOL, _deployment(0, replicas=replicas), pods=[starting], now=NOW
    )
    assert diagnosis == diagnosing.Diagnosis(
        "PoolUnavailable", f"gateway pool default has no Ready gateway (0 of {replicas})"
    )


def test_an_image_the_node_may_not_pull_is_stuck() -> None:
    waiting = {"reason": "ErrImageNeverPull", "message": 'image "x:0" is not present'}
    pod = _pod("a", containerStatuses=[{"name": "gateway", "state": {"waiting": waiting}}])
    diagnosis = diagnosing.from_pods([pod], now=NOW)
    assert diagnosis is not None
    assert diagnosis.reason == "ErrImageNeverPull"


# --- the session's status and events -------------------------------------------------------------


def test_a_registered_session_on_a_serving_pool_is_ready() -> None:
    observation = statuses.registered("default", None)
    assert (observation.phase, observation.reason, observation.available) == (
        statuses.Phase.READY,
        "Registered",
        True,
    )


def test_a_session_on_a_pool_that_cannot_serve_is_not_ready_and_warns_once() -> None:
    cause = diagnosing.from_pool(POOL, _deployment(0), pods=[_pulling("a")], now=NOW)
    observation = statuses.registered("default", cause)
    assert (observation.phase, observation.available, observation.warning) == (
        statuses.Phase.PROVISIONING,
        False,
        True,
    )
    status = statuses.build_status(
        None, observation, generation=1, previous={}, now="t", pooled={"registration": {}}
    )
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [(c["status"], c["reason"]) for c in ready] == [("False", "ImagePullBackOff")]
    assert "registration" in status  # still registered: the pool admits it once a gateway is up
    assert cause is not None
    warned = events.notes({"phase": "Ready", "reason": "Registered"}, observation)
    assert warned == [events.Note(events.Type.WARNING, cause.reason, cause.message)]
    assert events.notes(status, observation) == []  # the same cause again: no second event


def test_a_pool_that_serves_again_makes_its_session_ready_with_a_normal_event() -> None:
    ready = statuses.registered("default", None)
    notes = events.notes({"phase": "Provisioning", "reason": "PoolUnavailable"}, ready)
    assert notes == [events.Note(events.Type.NORMAL, "Ready", ready.message)]


def _crash_loop(name: str, *, now: datetime) -> list[dict[str, Any]]:
    """One restart of a crash-looping gateway as the kubelet reports it, state by state: waiting
    in back-off, running again (not Ready), exited, back-off again."""
    exited = {"reason": "Error", "exitCode": 1, "finishedAt": _stamp(now - timedelta(seconds=20))}
    base = {
        "name": "gateway",
        "ready": False,
        "restartCount": 4,
        "lastState": {"terminated": exited},
    }
    back_off = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}
    now_exited = {**exited, "finishedAt": _stamp(now)}
    states = [
        back_off,
        {"running": {"startedAt": _stamp(now - timedelta(seconds=2))}},
        {"terminated": now_exited},
        back_off,
    ]
    return [_pod(name, containerStatuses=[{**base, "state": state}]) for state in states]


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_crash_looping_pool_stays_crash_loop_back_off_between_restarts() -> None:
    reasons = [
        diagnosis.reason if diagnosis else None
        for pod in _crash_loop("earshot-pool-default-a", now=NOW)
        for diagnosis in [diagnosing.from_pool(POOL, _deployment(0), pods=[pod], now=NOW)]
    ]
    assert reasons == ["CrashLoopBackOff"] * 4


def test_a_running_pod_says_it_restarts_after_a_crash() -> None:
    running = _crash_loop("earshot-pool-default-a", now=NOW)[1]
    diagnosis = diagnosing.from_pool(POOL, _deployment(0), pods=[running], now=NOW)
    assert diagnosis is not None
    assert diagnosis.message.endswith(
        "container gateway of pod earshot-pool-default-a: restarting after a crash, "
        "last exit Error (code 1), restarted 4 times"
    )


def test_a_pod_that_crashed_long_ago_and_is_not_ready_is_only_unavailable() -> None:
    running = _crash_loop("earshot-pool-default-a", now=NOW - timedelta(hours=1))[1]
    diagnosis = diagnosing.from_pool(POOL, _deployment(0), pods=[running], now=NOW)
    assert diagnosis is not None
    assert diagnosis.reason == "PoolUnavailable"


# --- the loop that keeps each pool's answer -------------------------------------------------------


class ApiTable:
    """Answers GETs from a table of path -> answer (None: 404; an exception: raised)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Mapping[str, str] | None]] = []

    async def get(self, path: str, **_: Any) -> dict[str, Any] | None:
        return cast(dict[str, Any] | None, self._answer(path, None))

    async def request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, **_: Any
    ) -> dict[str, Any]:
        return cast(dict[str, Any], self._answer(path, params))

    def _answer(self, path: str, params: Mapping[str, str] | None) -> Any:
        self.requests.append((path, params))
        answer = self.answers.get(path)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _watch(api: ApiTable, changed: list[str], *pools: Pool) -> poolwatching.PoolWatch:
    async def on_change(pool: Pool) -> None:
        changed.append(pool.name)

    settings = OperatorSettings(pools=pools or (POOL,), pool_check_interval_seconds=0.01)
    return poolwatching.PoolWatch(cast(KubeClient, api), settings=settings, on_change=on_change)


async def test_a_reconcile_reads_the_pool_once_then_uses_the_kept_answer() -> None:
    api = ApiTable({DEPLOYMENT_PATH: _deployment(0), PODS_PATH: {"items": [_pulling("a")]}})
    watch = _watch(api, [])
    answers = await asyncio.gather(*(watch.diagnose(POOL) for _ in range(5)))
    assert {a.reason if a else None for a in answers} == {"ImagePullBackOff"}
    selector = "app.kubernetes.io/component=pool-default,app.kubernetes.io/instance=earshot"
    assert api.requests == [(DEPLOYMENT_PATH, None), (PODS_PATH, {"labelSelector": selector})]


async def test_a_ready_pool_needs_no_pod_listing() -> None:
    api = ApiTable({DEPLOYMENT_PATH: _deployment(2)})
    assert await _watch(api, []).diagnose(POOL) is None
    assert [path for path, _ in api.requests] == [DEPLOYMENT_PATH]


async def test_a_pool_without_its_deployment_named_is_not_read() -> None:
    api = ApiTable({})
    watch = _watch(api, [], UNCHECKED)
    assert await watch.diagnose(UNCHECKED) is None
    assert await watch.check_all() == []
    assert api.requests == []


async def test_a_pass_hands_on_only_the_pools_whose_answer_changed() -> None:
    api = ApiTable({DEPLOYMENT_PATH: _deployment(2)})
    changed: list[str] = []
    watch = _watch(api, changed)
    await watch.diagnose(POOL)
    await watch.check_all()
    assert changed == []  # the reconcile's answer still holds
    api.answers[DEPLOYMENT_PATH] = None  # deleted
    await watch.check_all()
    await watch.check_all()
    assert changed == ["default"]
    diagnosis = await watch.diagnose(POOL)
    assert diagnosis is not None
    assert diagnosis.reason == "PoolMissing"
    api.answers[DEPLOYMENT_PATH] = _deployment(0)
    api.answers[PODS_PATH] = {"items": [_pulling("a")]}
    await watch.check_all()
    assert changed == ["default", "default"]  # PoolMissing -> ImagePullBackOff
    api.answers[PODS_PATH] = {"items": [_pulling("b")]}  # same reason, other words
    await watch.check_all()
    assert changed == ["default", "default"]
    fresh = await watch.diagnose(POOL)
    assert fresh is not None
    assert "pod b" in fresh.message  # a new reconcile tells the newest words
    api.answers[DEPLOYMENT_PATH] = _deployment(1)
    await watch.check_all()
    assert changed == ["default", "default", "default"]
    assert await watch.diagnose(POOL) is None


async def test_a_crash_looping_pool_is_handed_on_once_not_on_every_restart() -> None:
    states = _crash_loop("earshot-pool-default-a", now=datetime.now(UTC))
    api = ApiTable({DEPLOYMENT_PATH: _deployment(2)})
    changed: list[str] = []
    watch = _watch(api, changed)
    await watch.diagnose(POOL)
    api.answers[DEPLOYMENT_PATH] = _deployment(0)
    for pod in states * 3:
        api.answers[PODS_PATH] = {"items": [pod]}
        await watch.check_all()
    assert changed == ["default"]  # Ready -> CrashLoopBackOff, and no flapping after it


async def test_an_unreadable_pool_keeps_its_answer_and_the_loop_goes_on() -> None:
    api = ApiTable({DEPLOYMENT_PATH: _deployment(2)})
    changed: list[str] = []
    watch = _watch(api, changed)
    await watch.diagnose(POOL)
    api.answers[DEPLOYMENT_PATH] = ApiError(403, {"reason": "Forbidden"})
    watch.start()
    await asyncio.sleep(0.1)
    assert watch.healthy
    assert changed == []
    assert await watch.diagnose(POOL) is None
    assert len(api.requests) >= 3
    await watch.stop()


def test_a_pool_whose_gateways_cannot_start_for_their_configuration_says_why() -> None:
    # What a pool's missing storage Secret looks like: the kubelet cannot build the container.
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "earshot-db" not found'}
    pod = _pod(
        "earshot-pool-default-c",
        containerStatuses=[{"name": "gateway", "state": {"waiting": waiting}}],
    )
    diagnosis = diagnosing.from_pool(POOL, _deployment(0), pods=[pod], now=NOW)
    assert diagnosis is not None
    assert diagnosis.reason == "CreateContainerConfigError"
    assert 'secret "earshot-db" not found' in diagnosis.message


SESSION_PATH = "/apis/earshot.dev/v1alpha1/namespaces/tel/transcriptionsessions/call-7"
OTHER_SESSION_PATH = "/apis/earshot.dev/v1alpha1/namespaces/other/transcriptionsessions/call-1"


class StatusApi:
    """A pool's Deployment and one session whose status PATCH checks its resourceVersion, as the
    API server does; ``during_patch`` runs once while the next PATCH is in flight."""

    def __init__(self) -> None:
        self.deployment = _deployment(0)
        self.session: dict[str, Any] = {
            "apiVersion": "earshot.dev/v1alpha1",
            "kind": "TranscriptionSession",
            "metadata": {"name": "call-7", "namespace": "tel", "uid": "u", "resourceVersion": "1"},
            "spec": {"userId": "a", "placement": {"pool": "default"}, "auth": "none"},
            "status": {"placement": "pool/default"},
        }
        self.during_patch: Callable[[], Awaitable[None]] | None = None
        # Other objects by path (other sessions).
        self.others: dict[str, dict[str, Any]] = {}

    async def get(self, path: str, *, cached: bool = False) -> dict[str, Any] | None:
        if path == DEPLOYMENT_PATH:
            return copy.deepcopy(self.deployment)
        if path == SESSION_PATH:
            return copy.deepcopy(self.session)
        return copy.deepcopy(self.others.get(path))

    async def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        assert (method, path) == ("GET", PODS_PATH)
        return {"items": []}

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(body)

    async def patch(self, path: str, body: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        if self.during_patch is not None:
            hook, self.during_patch = self.during_patch, None
            await hook()
        assert path == SESSION_PATH + "/status"
        meta = self.session["metadata"]
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != meta["resourceVersion"]:
            raise ConflictError(409, {})
        self.session["status"].update(body["status"])
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.session)


async def test_a_status_written_from_the_answer_before_a_pool_change_is_written_again() -> None:
    # The pool comes back while a handler's status, made from the old answer, is on its way; the
    # loop reconciles the session Ready first, then the handler's PATCH lands (after a conflict):
    # without a second write the session would stay Provisioning until the next drift pass.
    api = StatusApi()
    settings = OperatorSettings(pools=(POOL,), default_placement="default")
    client = cast(KubeClient, api)

    async def recheck(pool: Pool) -> None:
        await reconciling.reconcile(
            client,
            copy.deepcopy(api.session),
            settings=settings,
            pool_watch=watch,
            claims=claims,
            drift=True,
        )

    watch = poolwatching.PoolWatch(client, settings=settings, on_change=recheck)
    claims = claiming.SessionClaims()
    assert (await watch.diagnose(POOL)) is not None  # no Ready gateway yet

    async def pool_comes_back() -> None:
        api.deployment = _deployment(1)
        await watch.check_all()
        assert api.session["status"]["phase"] == "Ready"

    api.during_patch = pool_comes_back
    await reconciling.reconcile(
        client, copy.deepcopy(api.session), settings=settings, pool_watch=watch, claims=claims
    )
    assert watch.changes(POOL) == 1
    assert (api.session["status"]["phase"], api.session["status"]["reason"]) == (
        "Ready",
        "Registered",
    )


class _Claimed(NamedTuple):
    """A pooled session on a serving pool (StatusApi's), its claim, and an empty claims table."""

    api: StatusApi
    client: KubeClient
    settings: OperatorSettings
    watch: poolwatching.PoolWatch
    claims: claiming.SessionClaims
    mine: tuple[claiming.Key, claiming.Claim]


def _claimed_session() -> _Claimed:
    api = StatusApi()
    api.deployment = _deployment(1)
    api.session["metadata"]["creationTimestamp"] = "2026-12-04T10:00:00Z"
    settings = OperatorSettings(pools=(POOL,), default_placement="default")
    client = cast(KubeClient, api)

    async def unchanged(pool: Pool) -> None:
        raise AssertionError("the pool's answer does not change here")

    watch = poolwatching.PoolWatch(client, settings=settings, on_change=unchanged)
    mine = claiming.claim_of(api.session, settings)
    assert mine is not None
    return _Claimed(api, client, settings, watch, claiming.SessionClaims(), mine)


async def test_a_status_written_before_its_session_id_changed_hands_is_written_again() -> None:
    # An older session claiming the same id is seen while this session's Registered status is on
    # its way: the claims' handler reconciles this session Pending first, then the stale PATCH
    # lands (after a conflict). Without a second write the session would stay registered, and the
    # pool would refuse both sessions' clients as ambiguous.
    api, client, settings, watch, claims, mine = _claimed_session()
    claims.update("tel/call-7", mine)
    older = (mine[0], claiming.Claim("2026-12-04T09:00:00Z", False, "other/call-1", "uid-1"))
    api.others[OTHER_SESSION_PATH] = {"metadata": {"name": "call-1", "uid": "uid-1"}}

    async def older_seen() -> None:
        assert claims.update("other/call-1", older) == {"tel/call-7"}
        await reconciling.reconcile(
            client,
            copy.deepcopy(api.session),
            settings=settings,
            pool_watch=watch,
            claims=claims,
            drift=True,
        )
        assert api.session["status"]["reason"] == "SessionIdTaken"

    api.during_patch = older_seen
    await reconciling.reconcile(
        client, copy.deepcopy(api.session), settings=settings, pool_watch=watch, claims=claims
    )
    status = api.session["status"]
    assert (status["phase"], status["reason"]) == ("Pending", "SessionIdTaken")
    assert "by TranscriptionSession other/call-1" in status["message"]
    assert status.get("registration") is None
    assert status.get("endpoint") is None


async def test_a_holder_whose_deletion_was_missed_gives_the_id_up() -> None:
    # A watch that re-lists tells no deletion of what went meanwhile: the table still names a
    # holder that is gone. The session waiting for its id looks the holder up and registers.
    api, client, settings, watch, claims, mine = _claimed_session()
    gone = claiming.Claim("2026-12-04T09:00:00Z", False, "other/call-1", "uid-1")
    claims.update("other/call-1", (mine[0], gone))
    claims.update("tel/call-7", mine)
    api.others[OTHER_SESSION_PATH] = {"metadata": {"name": "call-1", "uid": "uid-of-a-new-one"}}
    await reconciling.reconcile(
        client, copy.deepcopy(api.session), settings=settings, pool_watch=watch, claims=claims
    )
    status = api.session["status"]
    assert (status["phase"], status["reason"]) == ("Ready", "Registered")
    assert status["registration"]["sessionId"] == "call-7"
    assert claims.claimants(mine[0]) == {"tel/call-7"}


async def test_a_pool_loop_that_died_makes_the_operator_unhealthy() -> None:
    # A bug (not an API error, which the loop logs and outlives) ends the loop: /healthz must say so.
    api = ApiTable({DEPLOYMENT_PATH: _deployment(1)})

    async def on_change(pool: Pool) -> None:
        raise RuntimeError("a bug")

    settings = OperatorSettings(pools=(POOL,), pool_check_interval_seconds=0.01)
    watch = poolwatching.PoolWatch(cast(KubeClient, api), settings=settings, on_change=on_change)
    drift = cast(drifting.DriftLoop, HealthyLoop())
    assert handlers.Loops(drift=drift, pools=watch).healthy
    watch.start()
    await asyncio.sleep(0.2)
    assert not watch.healthy
    assert not handlers.Loops(drift=drift, pools=watch).healthy
    with pytest.raises(RuntimeError, match="a bug"):
        await watch.stop()


class HealthyLoop:
    healthy = True
