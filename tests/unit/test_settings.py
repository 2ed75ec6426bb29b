"""The settings object: defaults, old variable names, and start-up errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from earshot.audio.codecs import Codec
from earshot.settings import Settings


def test_old_telephony_variable_names_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIO_INPUT_FORMAT", "ulaw")
    monkeypatch.setenv("AUDIO_SOURCE_RATE", "16000")
    monkeypatch.setenv("RETURN_TRANSCRIPTION", "false")
    monkeypatch.setenv("ASR_INFERENCE_WORKERS", "3")
    monkeypatch.setenv("ASR_INFERENCE_QUEUE_SIZE", "7")
    monkeypatch.setenv("ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("MYSQL_DATABASE_URL", "mysql://root@127.0.0.1/test")
    monkeypatch.setenv("MODEL_PATH", "/models/paraformer")
    settings = Settings()
    assert settings.audio_codec is Codec.ULAW
    assert settings.audio_rate == 16000
    assert settings.return_transcription is False
    assert (settings.inference_workers, settings.inference_queue_size) == (3, 7)
    assert settings.inference_queue_timeout_seconds == 0.5
    assert settings.partials_url == "redis://127.0.0.1:6379/0"
    assert settings.resolved_segments_url() == "mysql://root@127.0.0.1/test"
    assert str(settings.model_dir) == "/models/paraformer"


def test_earshot_names_win_over_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIO_INPUT_FORMAT", "ulaw")
    monkeypatch.setenv("EARSHOT_AUDIO_CODEC", "pcm16le")
    assert Settings().audio_codec is Codec.PCM16LE


def test_unknown_codec_is_a_start_up_error_naming_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIO_INPUT_FORMAT", "gsm")
    with pytest.raises(ValidationError, match="unknown audio codec 'gsm'; use one of: alaw, ulaw"):
        Settings()


def test_unsupported_rate_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIO_SOURCE_RATE", "11025")
    with pytest.raises(ValidationError, match="unsupported audio rate 11025 Hz; use 8000 or 16000"):
        Settings()


def test_embedded_default_keeps_segments_in_sqlite_under_the_cache_dir(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    assert settings.resolved_segments_url() == f"sqlite:///{tmp_path}/earshot.sqlite3"
    assert settings.partials_url == "memory://"


def test_the_lag_limit_is_read_and_a_negative_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_lag_seconds == 0.5
    monkeypatch.setenv("EARSHOT_MAX_LAG_SECONDS", "0.2")
    assert Settings().max_lag_seconds == 0.2
    monkeypatch.setenv("EARSHOT_MAX_LAG_SECONDS", "-1")
    with pytest.raises(ValidationError, match="EARSHOT_MAX_LAG_SECONDS"):
        Settings()


def test_the_load_limit_is_read_and_a_negative_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().max_inference_load == 0.9
    monkeypatch.setenv("EARSHOT_MAX_INFERENCE_LOAD", "0.5")
    assert Settings().max_inference_load == 0.5
    monkeypatch.setenv("EARSHOT_MAX_INFERENCE_LOAD", "-0.1")
    with pytest.raises(ValidationError, match="EARSHOT_MAX_INFERENCE_LOAD"):
        Settings()
