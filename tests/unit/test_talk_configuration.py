"""The Talk gateway's settings and AppAPI header checks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from earshot.gateways.talk import appapi
from earshot.gateways.talk.configuration import TalkSettings


def test_the_exapp_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LT_HPB_URL": "https://hpb.example.com/standalone-signaling/",
        "LT_INTERNAL_SECRET": "internal",
        "SKIP_CERT_VERIFY": "true",
        "APP_ID": "live_transcription",
        "APP_SECRET": "app",
        "APP_PORT": "23001",
        "NEXTCLOUD_URL": "https://cloud.example.com/",
        "EARSHOT_TALK_LANGUAGES": "en, fr",
        "EARSHOT_TALK_GRACE_SECONDS": "3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = TalkSettings()
    assert settings.signaling_url == "wss://hpb.example.com/standalone-signaling/spreed"
    assert (
        settings.backend_url
        == "https://cloud.example.com/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
    )
    assert settings.internal_secret.get_secret_value() == "internal"
    assert (settings.skip_cert_verify, settings.app_port, settings.grace_seconds) == (
        True,
        23001,
        3.0,
    )
    assert settings.languages == ("en", "fr")


def test_an_empty_language_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one language"):
        TalkSettings(languages=" , ")


def _headers(user: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {
        "AA-VERSION": "3",
        "EX-APP-ID": "live_transcription",
        "EX-APP-VERSION": "1",
        "AUTHORIZATION-APP-API": token,
    }


def test_appapi_headers_with_the_secret_name_the_user() -> None:
    assert (
        appapi.check(_headers("alice", "s"), app_id="live_transcription", app_secret="s") == "alice"
    )
    assert (
        appapi.check(
            _headers("", "s:with:colons"), app_id="live_transcription", app_secret="s:with:colons"
        )
        == ""
    )


def test_appapi_refuses_a_wrong_secret_and_an_unset_one() -> None:
    with pytest.raises(appapi.Unauthorized, match="secret"):
        appapi.check(_headers("alice", "x"), app_id="live_transcription", app_secret="s")
    with pytest.raises(appapi.Unauthorized):
        appapi.check(_headers("alice", ""), app_id="live_transcription", app_secret="")


def test_signed_requests_carry_what_check_accepts() -> None:
    headers = appapi.sign(
        app_id="live_transcription", app_version="1", aa_version="3", app_secret="s"
    )
    assert appapi.check(headers, app_id="live_transcription", app_secret="s") == ""
    assert headers["OCS-APIRequest"] == "true"


def test_the_talk_command_is_offered_by_the_cli() -> None:
    from typer.testing import CliRunner

    from earshot.cli.commands import app

    result = CliRunner().invoke(app, ["talk", "--help"])
    assert result.exit_code == 0
    assert "live_transcription" in result.output


def test_a_room_token_without_its_talkroom_is_refused() -> None:
    with pytest.raises(
        ValueError, match="EARSHOT_TALK_ROOM_TOKEN needs EARSHOT_TALK_TALKROOM_NAME"
    ):
        TalkSettings(room_token="r00m")


def test_a_room_gateway_is_not_also_the_cluster_exapp() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        TalkSettings(room_token="r00m", talkroom_name="talk-r00m", in_cluster=True)


EXAPP_ENV = {
    "APP_SECRET": "app",
    "LT_HPB_URL": "wss://hpb.example.com/standalone-signaling/",
    "LT_INTERNAL_SECRET": "internal",
}


def _talk_command(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from typer.testing import CliRunner

    from earshot.cli.commands import app

    for name in (*EXAPP_ENV, "EARSHOT_MODEL_DIR", "MODEL_PATH", "EARSHOT_TRITON_URL"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["talk"], env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("APP_SECRET", "APP_SECRET"),
        ("LT_HPB_URL", "LT_HPB_URL"),
        ("LT_INTERNAL_SECRET", "LT_INTERNAL_SECRET"),
    ],
)
def test_the_exapp_refuses_to_start_without_its_secrets_in_one_line(
    monkeypatch: pytest.MonkeyPatch, missing: str, named: str
) -> None:
    env = {k: v for k, v in EXAPP_ENV.items() if k != missing}
    code, output = _talk_command({**env, "EARSHOT_DEMO_MODEL": "true"}, monkeypatch)
    assert code == 2
    assert output == f"earshot: error: the Talk ExApp cannot start without {named}\n"


def test_the_exapp_refuses_to_caption_with_no_model_unless_asked_for_the_demo_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, output = _talk_command(EXAPP_ENV, monkeypatch)
    assert code == 2
    assert output.count("\n") == 1
    assert output.startswith("earshot: error: no model configured: set EARSHOT_MODEL_DIR")
    assert "EARSHOT_DEMO_MODEL=true" in output


def test_a_room_gateway_and_the_cluster_exapp_need_no_model_or_internal_secret_here() -> None:
    cluster = TalkSettings(app_secret="a", hpb_url="wss://h", in_cluster=True)
    room = TalkSettings(room_token="r00m", talkroom_name="talk-r00m")
    assert cluster.refusal() == ""
    assert room.refusal() == ""


def test_the_exapp_refuses_more_than_one_worker_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tiny_model_cache: Path
) -> None:
    # an address not of this host: a command that went on to serve would end at once, not hang
    env = {
        **EXAPP_ENV,
        "EARSHOT_DEMO_MODEL": "true",
        "EARSHOT_CACHE_DIR": str(tiny_model_cache),
        "EARSHOT_TALK_APP_HOST": "203.0.113.1",
        "EARSHOT_WORKERS": "2",
    }
    code, output = _talk_command(env, monkeypatch)
    assert code == 2
    assert output.startswith(
        "earshot: error: EARSHOT_WORKERS=2: the Talk ExApp runs as one process"
    )
