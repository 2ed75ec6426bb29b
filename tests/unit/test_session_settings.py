"""The settings a TranscriptionSession gives its gateway: each honoured or refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from earshot.settings import DEFAULT_IDLE_TIMEOUT_SECONDS, Settings


@pytest.fixture(autouse=True)
def no_session_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SESSION_ID", "USER_ID", "LANGUAGE", "IDLE_TIMEOUT_SECONDS", "AUTH"):
        monkeypatch.delenv(f"EARSHOT_{name}", raising=False)
    monkeypatch.delenv("EARSHOT_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("EARSHOT_ENGINE", raising=False)


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return str(refused.value)


def test_a_gateway_without_session_settings_serves_any_session_for_anyone() -> None:
    settings = Settings()
    assert (settings.session_id, settings.user_id, settings.language) == (None, None, "auto")
    assert settings.required_token() is None


def test_the_idle_timeout_defaults_to_five_minutes() -> None:
    assert Settings().idle_timeout_seconds == DEFAULT_IDLE_TIMEOUT_SECONDS == 300


def test_an_idle_timeout_of_zero_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, EARSHOT_IDLE_TIMEOUT_SECONDS="0")
    assert "EARSHOT_IDLE_TIMEOUT_SECONDS" in message
    assert "greater than 0" in message


def test_a_session_id_the_gateway_would_refuse_in_a_path_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refusal(monkeypatch, EARSHOT_SESSION_ID="a" * 65)
    assert "EARSHOT_SESSION_ID" in message
    assert "session id is 65 characters long; at most 64 are allowed" in message


def test_a_user_id_longer_than_its_column_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, EARSHOT_USER_ID="u" * 65)
    assert "EARSHOT_USER_ID" in message
    assert "at most 64 characters" in message


def test_an_empty_user_id_stores_no_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARSHOT_USER_ID", "")
    assert Settings().user_id is None


def test_auth_token_without_a_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, EARSHOT_AUTH="token")
    assert "auth 'token' needs EARSHOT_ACCESS_TOKEN, which is not set" in message


def test_auth_none_with_a_token_is_refused_as_contradictory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refusal(monkeypatch, EARSHOT_AUTH="none", EARSHOT_ACCESS_TOKEN="t")
    assert "auth 'none' but EARSHOT_ACCESS_TOKEN is set" in message


def test_an_unknown_auth_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, EARSHOT_AUTH="basic")
    assert "EARSHOT_AUTH" in message
    assert "'token' or 'none'" in message


@pytest.mark.parametrize(
    ("auth", "token", "required"),
    [("token", "t", "t"), ("none", None, None), (None, "t", "t"), (None, None, None)],
)
def test_the_required_token_follows_auth_and_the_token(
    auth: str | None, token: str | None, required: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if auth is not None:
        monkeypatch.setenv("EARSHOT_AUTH", auth)
    if token is not None:
        monkeypatch.setenv("EARSHOT_ACCESS_TOKEN", token)
    assert Settings().required_token() == required


def test_serve_with_a_language_its_engine_cannot_recognise_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "earshot", "serve"],
        env={**os.environ, "EARSHOT_ENGINE": "paraformer", "EARSHOT_LANGUAGE": "fr"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    reasons = [line for line in done.stderr.splitlines() if "EARSHOT_LANGUAGE" in line]
    assert len(reasons) == 1, done.stderr
    assert "engine paraformer cannot recognise language 'fr'" in reasons[0]
    assert "use auto, zh, en" in reasons[0]
