"""The comparison and patch logic that keeps re-runs from rewriting what is already right, and
the token Secret, created at once for a new resource and never changed after."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

from earshot_operator import reconciling
from earshot_operator.clients import ConflictError, KubeClient


def test_server_defaults_do_not_count_as_differences() -> None:
    wanted = {"spec": {"replicas": 1, "template": {"containers": [{"name": "gateway"}]}}}
    actual = {
        "metadata": {"resourceVersion": "7"},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "gateway", "imagePullPolicy": "IfNotPresent"}]},
        },
    }
    assert reconciling.contains(actual, wanted)


def test_a_changed_value_is_a_difference() -> None:
    assert not reconciling.contains({"data": {"codec": "alaw"}}, {"data": {"codec": "ulaw"}})


def test_an_extra_list_item_is_a_difference() -> None:
    wanted = {"env": [{"name": "A"}]}
    assert not reconciling.contains({"env": [{"name": "A"}, {"name": "B"}]}, wanted)


def test_merge_patch_drops_configmap_keys_no_longer_wanted() -> None:
    actual = {"data": {"EARSHOT_A": "1", "EARSHOT_OLD": "x"}}
    wanted = {"kind": "ConfigMap", "data": {"EARSHOT_A": "2"}}
    assert reconciling.merge_patch(actual, wanted) == {
        "kind": "ConfigMap",
        "data": {"EARSHOT_A": "2", "EARSHOT_OLD": None},
    }


class _Secrets:
    """An API server holding some Secrets; it records each request as (method, cached)."""

    def __init__(self, *stored: dict[str, Any]) -> None:
        self.stored = {s["metadata"]["name"]: s for s in stored}
        self.requests: list[tuple[str, bool]] = []

    async def get(self, path: str, *, cached: bool = False) -> dict[str, Any] | None:
        self.requests.append(("GET", cached))
        return copy.deepcopy(self.stored.get(path.rsplit("/", 1)[1]))

    async def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.requests.append(("POST", False))
        name = body["metadata"]["name"]
        if name in self.stored:
            raise ConflictError(409, {"reason": "AlreadyExists"})
        self.stored[name] = copy.deepcopy(dict(body))
        return copy.deepcopy(self.stored[name])


def _secret(token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tsess-call-7-token", "namespace": "tel"},
        "data": {"token": token},
    }


def _session(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "call-7", "namespace": "tel"}, "status": status}


async def test_a_new_sessions_token_is_created_without_a_read_first() -> None:
    api = _Secrets()
    change, actual = await reconciling.ensure_token(
        cast(KubeClient, api), _secret("new"), _session({})
    )
    assert (change, actual["data"]["token"]) == (reconciling.Change.CREATED, "new")
    assert api.requests == [("POST", False)]


async def test_a_token_made_before_the_status_named_it_is_kept() -> None:
    # the operator restarted between creating the Secret and writing the status
    api = _Secrets(_secret("old"))
    change, actual = await reconciling.ensure_token(
        cast(KubeClient, api), _secret("new"), _session({})
    )
    assert (change, actual["data"]["token"]) == (reconciling.Change.UNCHANGED, "old")
    assert api.requests == [("POST", False), ("GET", False)]


async def test_a_known_sessions_token_is_read_from_the_cache_and_never_changed() -> None:
    api = _Secrets(_secret("old"))
    session = _session({"tokenSecret": "tsess-call-7-token"})
    change, actual = await reconciling.ensure_token(cast(KubeClient, api), _secret("new"), session)
    assert (change, actual["data"]["token"]) == (reconciling.Change.UNCHANGED, "old")
    assert api.requests == [("GET", True)]


async def test_a_known_sessions_deleted_token_is_created_again() -> None:
    api = _Secrets()
    session = _session({"tokenSecret": "tsess-call-7-token"})
    change, _ = await reconciling.ensure_token(cast(KubeClient, api), _secret("new"), session)
    assert change is reconciling.Change.CREATED
    assert api.requests == [("GET", True), ("POST", False)]
