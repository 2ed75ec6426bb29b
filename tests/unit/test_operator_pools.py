"""Placing sessions on gateway pools and their registrations: pure functions."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from pydantic import ValidationError

from earshot_operator import dataplane, gateways, pools, specs, statuses
from earshot_operator.settings import OperatorSettings, Pool

DEFAULT = Pool(name="default", address="earshot-pool-default.earshot.svc:8000")
KYUTAI = Pool(name="gpu", address="earshot-pool-gpu.earshot.svc:8000", engine="kyutai")
POOLED = OperatorSettings(pools=(DEFAULT, KYUTAI), default_placement="default")


def _body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": "call-7", "namespace": "tel", "uid": "u-1"},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return body


def _place(body: dict[str, Any], settings: OperatorSettings = POOLED) -> pools.Placement:
    return pools.place(specs.parse_session(body), body, settings=settings)


def test_a_session_without_placement_goes_to_the_default_pool() -> None:
    assert _place(_body()).pool == DEFAULT
    assert _place(_body()).name == "pool/default"


def test_without_pools_the_default_placement_is_dedicated() -> None:
    assert _place(_body(), OperatorSettings()).pool is None


def test_the_spec_can_ask_for_a_dedicated_gateway_or_another_pool() -> None:
    assert _place(_body(placement={"dedicated": True})).name == "dedicated"
    assert _place(_body(engine="kyutai", placement={"pool": "gpu"})).pool == KYUTAI


def test_an_unknown_pool_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(specs.SpecError, match=r"'nope'.*default, gpu"):
        _place(_body(placement={"pool": "nope"}))


def test_a_pool_of_another_engine_is_refused() -> None:
    with pytest.raises(
        specs.SpecError, match="runs engine paraformer, the session asks for kyutai"
    ):
        _place(_body(engine="kyutai"))


def test_storage_overrides_need_a_dedicated_gateway() -> None:
    storage = {"redisUrlSecretRef": {"name": "mine", "key": "url"}}
    with pytest.raises(specs.SpecError, match=r"spec.storage cannot apply on pool 'default'"):
        _place(_body(storage=storage))
    assert _place(_body(storage=storage, placement={"dedicated": True})).pool is None


def test_pool_and_dedicated_together_are_refused() -> None:
    with pytest.raises(specs.SpecError, match="choose one of them"):
        specs.parse_session(_body(placement={"pool": "default", "dedicated": True}))


def test_a_placed_session_stays_when_the_default_changes() -> None:
    placed = _body(status={"placement": "dedicated", "tokenSecret": "tsess-call-7-token"})
    assert _place(placed).pool is None


def test_a_session_from_before_pools_stays_dedicated() -> None:
    assert _place(_body(status={"tokenSecret": "tsess-call-7-token"})).pool is None


def test_moving_a_placed_session_is_refused() -> None:
    placed = _body(status={"placement": "dedicated"}, placement={"pool": "default"})
    with pytest.raises(
        specs.SpecError, match="placed on dedicated and cannot move to pool/default"
    ):
        _place(placed)


def test_the_endpoint_is_the_pools_service_with_the_sessions_path() -> None:
    spec = specs.parse_session(_body(sessionId="pbx:42"))
    assert pools.endpoint(DEFAULT, spec) == (
        "ws://earshot-pool-default.earshot.svc:8000/ws/transcribe/pbx:42"
    )


def test_the_registration_holds_the_tokens_digest_and_the_sessions_settings() -> None:
    spec = specs.parse_session(_body(audio={"codec": "ulaw", "rate": 16000}, userId="alice"))
    registration = pools.build_registration(DEFAULT, spec, token="s3cret")
    assert registration["pool"] == "default"
    assert registration["sessionId"] == "call-7"
    assert registration["tokenSha256"] == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in str(registration)
    settings = registration["settings"]
    assert settings[dataplane.Env.AUDIO_CODEC] == "ulaw"
    assert settings[dataplane.Env.AUDIO_RATE] == "16000"
    assert settings[dataplane.Env.USER_ID] == "alice"


def test_a_registration_without_token_has_no_digest() -> None:
    spec = specs.parse_session(_body(auth="none"))
    assert "tokenSha256" not in pools.build_registration(DEFAULT, spec, token=None)


def test_the_session_settings_are_the_ones_the_contract_names() -> None:
    spec = specs.parse_session(_body())
    assert tuple(gateways.session_config(spec)) == dataplane.SESSION_SETTINGS


def test_a_pooled_status_is_ready_with_the_pools_endpoint_and_no_gateway_endpoint() -> None:
    gateway = gateways.build(_body(), POOLED)
    pooled = {"endpoint": "ws://pool/ws/transcribe/call-7", "registration": {"pool": "default"}}
    observation = statuses.Observation(statuses.Phase.READY, "Registered", "registered", True)
    status = statuses.build_status(
        gateway, observation, generation=1, previous={}, now="t", placement="pool/default",
        pooled=pooled,
    )  # fmt: skip
    assert status["endpoint"] == "ws://pool/ws/transcribe/call-7"
    assert status["placement"] == "pool/default"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Provisioned": "True",
        "Available": "True",
        "Ready": "True",
    }


def test_an_ended_registration_is_removed_by_the_status_patch() -> None:
    previous = {"phase": "Ready", "registration": {"pool": "default"}, "endpoint": "ws://x"}
    patch = statuses.status_patch(previous, {"phase": "Completed"})
    assert patch["registration"] is None
    assert patch["endpoint"] is None


def test_an_unknown_default_placement_is_refused() -> None:
    with pytest.raises(ValidationError, match="default placement 'gpu2'"):
        OperatorSettings(pools=(DEFAULT,), default_placement="gpu2")


def test_pools_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EARSHOT_OPERATOR_POOLS", '[{"name": "default", "address": "p.earshot.svc:8000"}]'
    )
    monkeypatch.setenv("EARSHOT_OPERATOR_DEFAULT_PLACEMENT", "default")
    settings = OperatorSettings()
    assert settings.pool("default") == Pool(name="default", address="p.earshot.svc:8000")


def test_a_pools_deployment_is_read_as_namespace_and_name() -> None:
    pool = Pool(name="default", address="a:1", deployment="earshot/earshot-pool-default")
    assert pool.deployment_ref == ("earshot", "earshot-pool-default")
    assert DEFAULT.deployment_ref is None  # not named: the pool is not checked
    with pytest.raises(ValidationError, match="deployment"):
        Pool(name="default", address="a:1", deployment="earshot-pool-default")


def test_a_session_is_on_the_pool_its_status_names() -> None:
    on_default = pools.placed_on(DEFAULT)
    assert on_default(_body({"placement": "pool/default"}))
    assert not on_default(_body({"placement": "pool/gpu"}))
    assert not on_default(_body({"placement": "dedicated"}))
    assert not on_default(_body())
