"""A pool gateway's registrations: what the operator writes is what the gateway applies.

The operator side builds each registration here (``earshot_operator.pools``); the data-plane side
parses it (``earshot.gateways.g711.registrations``): every setting the operator registers changes
the session's own settings or its admission, and nothing else's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from earshot.audio.codecs import Codec
from earshot.events import SessionId
from earshot.gateways.g711 import following, registrations
from earshot.gateways.g711.registrations import NotAdmitted, Registry
from earshot.settings import Settings
from earshot_operator import dataplane, pools, specs
from earshot_operator.settings import Pool

POOL = Pool(name="default", address="pool.earshot.svc:8000")
BASE = Settings(pool="default", idle_timeout_seconds=300)


def _body(name: str = "call-7", *, token: str | None = "t0ken", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": name, "namespace": "tel", "uid": "u"},
        "spec": spec,
    }
    registration = pools.build_registration(POOL, specs.parse_session(body), token=token)
    body["status"] = {"registration": registration}
    return body


def _parse(body: dict[str, Any]) -> registrations.Registration:
    parsed = registrations.parse(body, pool="default", base=BASE)
    assert parsed is not None
    return parsed


def test_the_contract_names_agree_on_both_sides() -> None:
    assert (
        registrations.REGISTRATION,
        registrations.POOL,
        registrations.SESSION_ID,
        registrations.TOKEN_SHA256,
        registrations.SETTINGS,
        registrations.SESSION_ID_SETTING,
        registrations.AUTH_SETTING,
    ) == (
        dataplane.REGISTRATION,
        dataplane.REGISTRATION_POOL,
        dataplane.REGISTRATION_SESSION_ID,
        dataplane.REGISTRATION_TOKEN_SHA256,
        dataplane.REGISTRATION_SETTINGS,
        dataplane.Env.SESSION_ID,
        dataplane.Env.AUTH,
    )


def test_every_registered_setting_changes_the_sessions_own_settings() -> None:
    default = _parse(_body()).settings
    changed = _parse(
        _body(
            userId="alice",
            audio={"codec": "ulaw", "rate": 16000},
            language="zh",
            returnTranscription=False,
            idleTimeoutSeconds=42,
        )
    ).settings
    assert (default.user_id, changed.user_id) == (None, "alice")
    assert (default.audio_codec, changed.audio_codec) == (Codec.ALAW, Codec.ULAW)
    assert (default.audio_rate, changed.audio_rate) == (8000, 16000)
    assert (default.language, changed.language) == ("auto", "zh")
    assert (default.return_transcription, changed.return_transcription) == (True, False)
    assert (default.idle_timeout_seconds, changed.idle_timeout_seconds) == (300, 42)
    # the pool's own settings stay: the session changes only its stream's
    assert changed.pool == "default"
    assert BASE.audio_codec is Codec.ALAW


def test_the_session_id_and_auth_decide_admission() -> None:
    registration = _parse(_body(sessionId="pbx:42"))
    assert registration.session_id == "pbx:42"
    assert registration.admits("t0ken")
    assert not registration.admits("t0ken ")
    assert not registration.admits("")
    assert _parse(_body(auth="none", token=None)).admits("")


def test_a_token_session_without_a_digest_admits_nobody() -> None:
    body = _body()
    del body["status"]["registration"]["tokenSha256"]
    assert registrations.parse(body, pool="default", base=BASE) is None


def test_another_pools_or_an_inactive_sessions_registration_is_not_ours() -> None:
    assert registrations.parse(_body(), pool="other", base=BASE) is None
    assert registrations.parse(_body(active=False), pool="default", base=BASE) is None
    assert registrations.parse({"metadata": {}, "spec": {}}, pool="default", base=BASE) is None


async def test_a_session_being_deleted_ends_its_stream_before_its_object_is_gone() -> None:
    ended: list[tuple[SessionId, str]] = []
    registry = Registry()
    async with httpx.AsyncClient() as unused:
        follower = following.Follower(
            unused,
            registry,
            settings=BASE,
            on_ended=lambda lost, why: ended.append((lost.session_id, why)),
        )
        body = _body("a")
        follower._apply({"type": "ADDED", "object": body})
        assert ended == []
        # a finalizer holds the object: it is MODIFIED with a deletionTimestamp, not yet DELETED
        body["metadata"]["deletionTimestamp"] = "2026-12-04T04:20:00Z"
        follower._apply({"type": "MODIFIED", "object": body})
    assert ended == [(SessionId("a"), "its TranscriptionSession was deleted")]
    assert registrations.parse(body, pool="default", base=BASE) is None


def test_a_setting_the_gateway_does_not_know_is_refused() -> None:
    body = _body()
    body["status"]["registration"]["settings"]["EARSHOT_NOPE"] = "1"
    assert registrations.parse(body, pool="default", base=BASE) is None


def test_the_registry_reports_the_session_that_lost_its_registration() -> None:
    registry = Registry()
    first = _parse(_body("a"))
    assert registry.put(first.resource, first) is None
    bobs = _parse(_body("a", userId="bob"))
    assert registry.put(first.resource, bobs) is None  # still there
    assert registry.put(first.resource, None) == bobs
    registry.put(first.resource, first)
    assert registry.replace([_parse(_body("b"))]) == [first]


def test_a_registration_lost_names_its_resource_also_when_another_registers_its_id() -> None:
    # Two resources register one id for a moment (the operator then withdraws the younger's): the
    # registration lost is the younger's, so only a stream it admitted is ended.
    registry = Registry()
    held, younger = _parse(_body("x", sessionId="same")), _parse(_body("y", sessionId="same"))
    registry.put(held.resource, held)
    registry.put(younger.resource, younger)
    assert registry.put(younger.resource, None) == younger
    assert registry.find(SessionId("same")) == held
    moved = _parse(_body("x", sessionId="other"))
    assert registry.replace([moved]) == [held]  # x registers another id now


def test_two_resources_claiming_one_session_id_admit_neither() -> None:
    registry = Registry()
    for name in ("x", "y"):
        registration = _parse(_body(name, sessionId="same"))
        registry.put(registration.resource, registration)
    with pytest.raises(NotAdmitted, match=r"more than one TranscriptionSession \(tel/x, tel/y\)"):
        registry.find(SessionId("same"))


async def test_admission_waits_for_a_registration_on_its_way() -> None:
    registry = Registry()
    late = _parse(_body("late"))

    async def register() -> None:
        await asyncio.sleep(0.05)
        registry.put(late.resource, late)

    task = asyncio.create_task(register())
    assert await registry.admit(SessionId("late"), "t0ken", wait=2.0) is late
    await task


async def test_admission_refuses_unknown_sessions_and_wrong_tokens() -> None:
    registry = Registry()
    known = _parse(_body("known"))
    registry.put(known.resource, known)
    with pytest.raises(NotAdmitted) as unknown:
        await registry.admit(SessionId("other"), "t0ken", wait=0.05)
    assert unknown.value.code == "session_not_registered"
    with pytest.raises(NotAdmitted) as wrong:
        await registry.admit(SessionId("known"), "not-it", wait=0.05)
    assert wrong.value.code == "unauthorized"


@pytest.mark.parametrize(
    "environment",
    [
        {"EARSHOT_TRITON_URL": "triton:8001"},
        {"EARSHOT_ENGINE": "kyutai", "EARSHOT_KYUTAI_MAX_STREAMS": "4"},
        # An environment with the older server's names gets its defaults (queue timeout 20 s):
        # defaults still, which Triton and Kyutai do not read and must not be refused for.
        {"EARSHOT_TRITON_URL": "triton:8001", "MYSQL_DATABASE_URL": "sqlite:///x.db"},
        {"EARSHOT_ENGINE": "kyutai", "REDIS_URL": "redis://r:6379/0"},
    ],
)
def test_a_pool_on_any_engine_admits_its_sessions(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    # The pool's own defaults are not settings someone gave: no engine-only check may refuse
    # them per session, on Triton or Kyutai as on the in-process Paraformer.
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    base = Settings(pool="default")
    parsed = registrations.parse(_body(), pool="default", base=base)
    assert parsed is not None
    assert parsed.settings.engine == base.engine
    assert parsed.settings.triton_url == base.triton_url
    assert "inference_queue_timeout_seconds" not in parsed.settings.given()
    assert parsed.settings.inference_queue_timeout_seconds == base.inference_queue_timeout_seconds
