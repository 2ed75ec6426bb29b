"""The operator's settings object: built once from the environment, frozen."""

from __future__ import annotations

import pydantic
import pytest

from earshot_operator.settings import OperatorSettings, SecretKeyRef


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARSHOT_OPERATOR_GATEWAY_IMAGE", "reg/earshot:9")
    monkeypatch.setenv("EARSHOT_OPERATOR_TRITON_KYUTAI_URL", "gpu-pool:8001")
    monkeypatch.setenv("EARSHOT_OPERATOR_REDIS_URL_SECRET", '{"name": "r", "key": "url"}')
    monkeypatch.setenv("EARSHOT_OPERATOR_GATEWAY_RESOURCES__CPU_REQUEST", "1")
    monkeypatch.setenv("EARSHOT_OPERATOR_NAMESPACES", "tel, talk")
    settings = OperatorSettings()
    assert settings.gateway_image == "reg/earshot:9"
    assert settings.triton_url("kyutai") == "gpu-pool:8001"
    assert settings.redis_url_secret == SecretKeyRef(name="r", key="url")
    assert settings.gateway_resources.cpu_request == "1"
    assert settings.namespaces == ("tel", "talk")


def test_settings_have_working_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EARSHOT_OPERATOR_NAMESPACES", "EARSHOT_OPERATOR_GATEWAY_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    settings = OperatorSettings()
    assert settings.namespaces == ()
    assert settings.triton_url("paraformer") == settings.triton_paraformer_url
    assert settings.mysql_url_secret.key == "mysql-url"


def test_settings_are_frozen() -> None:
    settings = OperatorSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.gateway_port = 1  # type: ignore[misc]


def test_unknown_engine_has_no_triton_endpoint() -> None:
    with pytest.raises(KeyError):
        OperatorSettings().triton_url("whisper")
