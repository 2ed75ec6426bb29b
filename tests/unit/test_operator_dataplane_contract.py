"""The environment the operator gives a gateway is what the data plane's settings read.

The operator must not import ``earshot``; this test may, and pins the contract between them.
"""

from __future__ import annotations

import pytest

from earshot.gateways.talk.configuration import TalkSettings
from earshot.settings import Settings
from earshot_operator import gateways, manifests
from earshot_operator.settings import OperatorSettings


def test_gateway_environment_configures_the_data_plane_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TranscriptionSession",
        "metadata": {"name": "call-9", "namespace": "tel", "uid": "u", "generation": 1},
        "spec": {"audio": {"codec": "ulaw", "rate": 16000}, "returnTranscription": False},
    }
    gateway = gateways.build(body, OperatorSettings())
    for name, value in manifests.build_configmap(gateway)["data"].items():
        monkeypatch.setenv(name, value)
    secret_values = {
        "EARSHOT_ACCESS_TOKEN": "t0ken",
        "EARSHOT_PARTIALS_URL": "redis://redis:6379/0",
        "EARSHOT_SEGMENTS_URL": "mysql+aiomysql://u:p@mysql/earshot",
    }
    assert {name for name, _ in gateway.secret_env} == set(secret_values)
    for name, value in secret_values.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert (str(settings.audio_codec), settings.audio_rate) == ("ulaw", 16000)
    assert settings.return_transcription is False
    assert settings.access_token is not None
    assert settings.access_token.get_secret_value() == "t0ken"
    assert settings.partials_url == "redis://redis:6379/0"
    assert settings.segments_url == "mysql+aiomysql://u:p@mysql/earshot"
    assert settings.persister == "sidecar"
    assert str(settings.resolved_spool_dir()) == "/var/spool/earshot"


def test_room_environment_configures_the_talk_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {
        "apiVersion": "earshot.dev/v1alpha1",
        "kind": "TalkRoom",
        "metadata": {"name": "standup", "namespace": "talk", "uid": "u", "generation": 1},
        "spec": {
            "roomToken": "r00m",
            "hpbUrl": "wss://hpb.example/spreed",
            "nextcloudUrl": "https://cloud.example",
            "internalSecretRef": {"name": "hpb"},
            "languages": ["fr", "en"],
        },
    }
    gateway = gateways.build(body, OperatorSettings())
    for name, value in manifests.build_configmap(gateway)["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EARSHOT_TALK_INTERNAL_SECRET", "hpb-secret")
    assert "EARSHOT_TALK_INTERNAL_SECRET" in dict(gateway.secret_env)

    talk = TalkSettings()
    settings = Settings()

    assert (talk.hpb_url, talk.nextcloud_url) == (
        "wss://hpb.example/spreed",
        "https://cloud.example",
    )
    assert talk.languages == ("en", "fr")  # the offered set; the TalkRoom says which is in use
    assert talk.app_port == 8000
    assert talk.internal_secret.get_secret_value() == "hpb-secret"
    assert settings.persister_port == 8001
