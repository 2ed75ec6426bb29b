"""The older telephony server's configuration read by earshot: its .env, its names, its defaults."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from earshot.cli import logs
from earshot.engines import paraformer
from earshot.settings import DEFAULTS, LEGACY_NAMES, LEGACY_USER_ID, Settings

OLD_NAMES = {
    "APP_HOST": "0.0.0.0",
    "APP_PORT": "9000",
    "LOG_LEVEL": "INFO",
    "PROJECT_NAME": "switchboard-asr",
    "APP_WORKERS": "1",
}


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working directory and an environment without any name earshot reads."""
    monkeypatch.chdir(tmp_path)
    for name in [*LEGACY_NAMES, *OLD_NAMES]:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_dotenv_file_of_the_working_directory_is_read(clean: Path) -> None:
    (clean / ".env").write_text("".join(f"{k}={v}\n" for k, v in OLD_NAMES.items()))
    settings = Settings()
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9000, "info")
    assert (settings.project_name, settings.workers) == ("switchboard-asr", 1)


def test_the_environment_wins_over_the_dotenv_file(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean / ".env").write_text("APP_PORT=9000\n")
    monkeypatch.setenv("EARSHOT_PORT", "9100")
    assert Settings().port == 9100


def test_log_dir_sends_the_logs_to_a_file_there(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_DIR", str(clean / "logs"))
    root = logging.getLogger()
    kept = (root.handlers[:], root.level)
    try:
        logs.configure(Settings())
        logging.getLogger("earshot.test").warning("written to the file")
        for handler in root.handlers:
            handler.flush()
            if handler not in kept[0]:
                handler.close()
    finally:
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
    assert "written to the file" in (clean / "logs" / logs.LOG_FILE).read_text()


def test_the_older_servers_worker_count_is_honoured_and_zero_refused(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_WORKERS", "4")
    assert Settings().workers == 4
    monkeypatch.setenv("APP_WORKERS", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Settings()


@pytest.mark.parametrize("old_name", LEGACY_NAMES)
def test_any_old_name_brings_the_older_servers_defaults(
    old_name: str, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = {"AUDIO_INPUT_FORMAT": "alaw", "AUDIO_SOURCE_RATE": "8000"}
    monkeypatch.setenv(old_name, value.get(old_name, "1"))
    settings = Settings()
    # The old names that set a field with a legacy default set it to "1" here.
    own = {
        "ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS": "inference_queue_timeout_seconds",
        "PROJECT_NAME": "project_name",
    }.get(old_name)
    assert {name: getattr(settings, name) for name in DEFAULTS if name != own} == {
        name: default.legacy for name, default in DEFAULTS.items() if name != own
    }


def test_the_older_servers_defaults_are_the_ones_its_users_had() -> None:
    legacy = {name: default.legacy for name, default in DEFAULTS.items()}
    assert legacy["inference_queue_timeout_seconds"] == 20.0
    assert (
        legacy["endpoint_silence_without_text_seconds"],
        legacy["endpoint_silence_after_text_seconds"],
        legacy["endpoint_max_segment_seconds"],
    ) == (3.0, 1.2, 300.0)
    assert (legacy["bad_frame_policy"], legacy["user_id"]) == ("skip", LEGACY_USER_ID)
    # Its probes read project_name from /health; it listened on every interface.
    assert (legacy["host"], legacy["project_name"]) == ("0.0.0.0", "PyStreamASR")


def test_old_names_read_from_dotenv_count_too(clean: Path) -> None:
    (clean / ".env").write_text("ASR_INFERENCE_QUEUE_SIZE=64\n")
    settings = Settings()
    assert settings.inference_queue_size == 64
    assert settings.inference_queue_timeout_seconds == 20.0


def test_without_old_names_earshots_defaults_apply(clean: Path) -> None:
    settings = Settings()
    assert {name: getattr(settings, name) for name in DEFAULTS} == {
        name: default.earshot for name, default in DEFAULTS.items()
    }


@pytest.mark.parametrize("shared", ["APP_HOST", "APP_PORT", "LOG_LEVEL"])
def test_names_shared_with_appapi_do_not_switch_the_defaults(
    shared: str, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(shared, OLD_NAMES[shared])
    assert Settings().inference_queue_timeout_seconds == 2.0


def test_an_explicit_value_wins_over_an_old_default(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASR_INFERENCE_QUEUE_SIZE", "64")
    monkeypatch.setenv("ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("EARSHOT_ENDPOINT_MAX_SEGMENT_SECONDS", "45")
    monkeypatch.setenv("EARSHOT_BAD_FRAME_POLICY", "refuse")
    monkeypatch.setenv("EARSHOT_USER_ID", "pbx-7")
    settings = Settings()
    assert settings.inference_queue_timeout_seconds == 7.0
    assert settings.endpoint_max_segment_seconds == 45.0
    assert settings.endpoint_silence_after_text_seconds == 1.2  # still the old default
    assert (settings.bad_frame_policy, settings.user_id) == ("refuse", "pbx-7")


def test_an_unknown_bad_frame_policy_is_refused(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARSHOT_BAD_FRAME_POLICY", "ignore")
    with pytest.raises(ValidationError, match="EARSHOT_BAD_FRAME_POLICY"):
        Settings()


def test_the_engines_endpoint_defaults_are_the_settings_defaults() -> None:
    rules = paraformer.EndpointRules()
    assert (rules.silence_without_text, rules.silence_after_text, rules.max_segment) == (
        DEFAULTS["endpoint_silence_without_text_seconds"].earshot,
        DEFAULTS["endpoint_silence_after_text_seconds"].earshot,
        DEFAULTS["endpoint_max_segment_seconds"].earshot,
    )


def _finals_of_loud_noise(settings: Settings, seconds: float) -> int:
    decoder = paraformer.load_paraformer(settings)
    stream = decoder.open()
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, int(16_000 * seconds)).astype(np.float32)
    finals = 0
    for start in range(0, len(noise), 1600):
        decoder.accept(stream, noise[start : start + 1600])
        finals += sum(r.is_final for r in decoder.decode([stream])[0])
    return finals


def test_the_configured_maximum_segment_length_cuts_segments(tiny_model_cache: Path) -> None:
    # The tiny model emits tokens for every loud chunk: only rule 3 can end these segments.
    base = Settings(cache_dir=tiny_model_cache)
    short = base.model_copy(update={"endpoint_max_segment_seconds": 1.0})
    long = base.model_copy(update={"endpoint_max_segment_seconds": 300.0})
    assert _finals_of_loud_noise(long, 6.0) == 0
    assert _finals_of_loud_noise(short, 6.0) >= 3


def test_sherpa_runs_with_the_three_configured_endpoint_rules(tiny_model_cache: Path) -> None:
    settings = Settings(
        cache_dir=tiny_model_cache,
        endpoint_silence_without_text_seconds=3.5,
        endpoint_silence_after_text_seconds=1.75,
        endpoint_max_segment_seconds=42.0,
    )
    decoder = paraformer.load_paraformer(settings)
    config = decoder._recognizer.config.endpoint_config
    assert (
        config.rule1.min_trailing_silence,
        config.rule2.min_trailing_silence,
        config.rule3.min_utterance_length,
    ) == (3.5, 1.75, 42.0)
