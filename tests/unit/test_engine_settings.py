"""Settings only one engine reads in process: honoured there, refused at start-up everywhere else.

The endpoint rules (EARSHOT_ENDPOINT_*), the inference pool (EARSHOT_INFERENCE_*) and the Kyutai
options (EARSHOT_KYUTAI_*) each reach one engine run in process. Given for the other engine, or
with EARSHOT_TRITON_URL (where the model's config.pbtxt holds its own), they would do nothing: the
process refuses to start and says which variable, why, and what to set instead.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from earshot.engines import loading, sequencing
from earshot.engines.batching import BatchingRecognizer
from earshot.engines.recognizers import EngineOverloaded
from earshot.settings import ENGINE_ONLY, LEGACY_NAMES, Settings

REPO = Path(__file__).resolve().parents[2]
#: A value each engine-only setting accepts, unlike its default.
VALUES = {
    "endpoint_silence_without_text_seconds": "3.5",
    "endpoint_silence_after_text_seconds": "1.75",
    "endpoint_max_segment_seconds": "42",
    "inference_threads": "2",
    "inference_workers": "2",
    "inference_queue_size": "8",
    "inference_queue_timeout_seconds": "5",
    "max_inference_load": "0.5",
    "kyutai_device": "cpu",
    "kyutai_max_streams": "2",
    "kyutai_pause_seconds": "1.5",
    "kyutai_pause_threshold": "0.7",
}
OTHER_ENGINE = {"paraformer": "kyutai", "kyutai": "paraformer"}


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the machine or a .env decides what these tests build."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("EARSHOT_") or name in LEGACY_NAMES:
            monkeypatch.delenv(name)


def test_every_engine_only_setting_has_a_value_here() -> None:
    assert set(VALUES) == set(ENGINE_ONLY) <= set(Settings.model_fields)


@pytest.mark.parametrize("name", sorted(ENGINE_ONLY))
def test_an_engine_only_setting_is_refused_for_the_other_engine(
    name: str, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = OTHER_ENGINE[ENGINE_ONLY[name].engine]
    monkeypatch.setenv("EARSHOT_ENGINE", engine)
    monkeypatch.setenv(f"EARSHOT_{name.upper()}", VALUES[name])
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert f"EARSHOT_{name.upper()}" in message
    assert f"only the {ENGINE_ONLY[name].engine} engine in process reads it" in message
    assert f"this process runs {engine}; unset it" in message


@pytest.mark.parametrize("name", sorted(ENGINE_ONLY))
def test_an_engine_only_setting_is_refused_through_triton_with_the_models_parameter(
    name: str, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARSHOT_ENGINE", ENGINE_ONLY[name].engine)
    monkeypatch.setenv("EARSHOT_TRITON_URL", "triton:8001")
    monkeypatch.setenv(f"EARSHOT_{name.upper()}", VALUES[name])
    with pytest.raises(ValidationError) as refused:
        Settings()
    message = str(refused.value)
    assert f"EARSHOT_{name.upper()}" in message
    assert "recognises through Triton (EARSHOT_TRITON_URL); unset it" in message
    parameter = ENGINE_ONLY[name].triton_parameter
    if parameter is not None:
        assert f"in the model's config.pbtxt, set {parameter}" in message


@pytest.mark.parametrize("name", sorted(ENGINE_ONLY))
def test_an_engine_only_setting_is_accepted_by_its_engine_in_process(
    name: str, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARSHOT_ENGINE", ENGINE_ONLY[name].engine)
    monkeypatch.setenv(f"EARSHOT_{name.upper()}", VALUES[name])
    value = getattr(Settings(), name)
    assert str(value) == VALUES[name] or value == float(VALUES[name])


def test_an_older_name_is_named_in_the_refusal(
    clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARSHOT_TRITON_URL", "triton:8001")
    monkeypatch.setenv("ASR_INFERENCE_WORKERS", "4")
    with pytest.raises(
        ValidationError, match=r"EARSHOT_INFERENCE_WORKERS \(ASR_INFERENCE_WORKERS\)"
    ):
        Settings()


@pytest.mark.parametrize(
    "where", [{"EARSHOT_TRITON_URL": "triton:8001"}, {"EARSHOT_ENGINE": "kyutai"}]
)
def test_the_older_servers_defaults_are_not_settings_the_user_gave(
    where: dict[str, str], clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The older server's .env turns on its defaults (endpoint rules 3.0/1.2/300, queue timeout
    # 20 s): defaults, not settings, so Triton or Kyutai with that .env still starts.
    Path(".env").write_text("MODEL_PATH=/models/paraformer\nREDIS_URL=redis://r:6379/0\n")
    for name, value in where.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.endpoint_max_segment_seconds == 300.0
    assert "endpoint_max_segment_seconds" in settings.model_fields_set
    assert "endpoint_max_segment_seconds" not in settings.given()
    assert "model_dir" in settings.given()


def test_a_setting_given_with_the_older_names_is_still_the_users(
    clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path(".env").write_text("MODEL_PATH=/models/paraformer\n")
    monkeypatch.setenv("EARSHOT_ENGINE", "kyutai")
    monkeypatch.setenv("EARSHOT_ENDPOINT_MAX_SEGMENT_SECONDS", "300")  # the old default, given
    with pytest.raises(ValidationError, match="EARSHOT_ENDPOINT_MAX_SEGMENT_SECONDS"):
        Settings()


def test_settings_passed_by_the_caller_are_checked_too() -> None:
    with pytest.raises(ValidationError, match="EARSHOT_KYUTAI_MAX_STREAMS"):
        Settings(engine="paraformer", kyutai_max_streams=4)


@pytest.mark.parametrize(
    "parameter", sorted(p for only in ENGINE_ONLY.values() if (p := only.triton_parameter))
)
def test_each_triton_parameter_named_is_one_the_triton_model_reads(parameter: str) -> None:
    assert f'"{parameter}"' in inspect.getsource(sequencing)


async def test_the_endpoint_rules_reach_the_in_process_paraformer_opened_by_name(
    tiny_model_cache: Path,
) -> None:
    # The tiny model emits tokens for every loud chunk: only rule 3 ends these segments.
    settings = Settings(cache_dir=tiny_model_cache, endpoint_max_segment_seconds=1.0)
    recognizer = await loading.open_recognizer(settings)
    try:
        stream = recognizer.open_stream()
        noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000 * 4).astype(np.float32)
        finals = 0
        for start in range(0, len(noise), 1600):
            finals += sum(r.is_final for r in await stream.accept(noise[start : start + 1600]))
        assert finals >= 2
    finally:
        await recognizer.aclose()


async def test_the_in_process_paraformer_knows_a_streams_cost_before_its_first_caller(
    tiny_model_cache: Path,
) -> None:
    # The load limit reads it: a burst right after start-up is measured against a real cost.
    recognizer = await loading.open_recognizer(Settings(cache_dir=tiny_model_cache))
    try:
        assert isinstance(recognizer, BatchingRecognizer)
        assert recognizer.stream_load() > 0
    finally:
        await recognizer.aclose()


async def test_the_kyutai_slots_reach_the_in_process_kyutai_opened_by_name(
    tiny_model_cache: Path,
) -> None:
    settings = Settings(engine="kyutai", cache_dir=tiny_model_cache, kyutai_max_streams=2)
    recognizer = await loading.open_recognizer(settings)
    try:
        streams = [recognizer.open_stream() for _ in range(3)]
        chunk = np.zeros(1920, dtype=np.float32)
        await streams[0].accept(chunk)
        await streams[1].accept(chunk)
        with pytest.raises(EngineOverloaded):
            await streams[2].accept(chunk)
        for stream in streams[:2]:
            await stream.finish()
    finally:
        await recognizer.aclose()


def test_serve_refuses_an_ignored_setting_in_one_line_with_exit_2(tmp_path: Path) -> None:
    paths = os.pathsep.join([str(REPO / "services"), str(REPO / "operator")])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EARSHOT_")},
        "PYTHONPATH": paths,
        "EARSHOT_CACHE_DIR": str(tmp_path),
        "EARSHOT_TRITON_URL": "127.0.0.1:1",
        "EARSHOT_ENDPOINT_SILENCE_AFTER_TEXT_SECONDS": "0.8",
    }
    done = subprocess.run(
        [sys.executable, "-m", "earshot", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "earshot: error: invalid configuration: EARSHOT_ENDPOINT_SILENCE_AFTER_TEXT_SECONDS would "
        "do nothing: only the paraformer engine in process reads it, and this process recognises "
        "through Triton (EARSHOT_TRITON_URL); unset it; in the model's config.pbtxt, set "
        "rule2_min_trailing_silence"
    ]


TRITON_ONLY = {
    "EARSHOT_TRITON_KEEPALIVE_SECONDS": "5",
    "EARSHOT_TRITON_REQUEST_TIMEOUT_SECONDS": "7",
    "EARSHOT_TRITON_RECONNECT_TIMEOUT_SECONDS": "9",
}


@pytest.mark.parametrize("variable", sorted(TRITON_ONLY))
def test_a_triton_setting_without_triton_is_refused(
    variable: str, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, TRITON_ONLY[variable])
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert f"{variable} would do nothing" in str(refused.value)
    assert "EARSHOT_TRITON_URL is not set; set that or unset it" in str(refused.value)


def test_the_triton_settings_are_taken_with_triton(
    clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EARSHOT_TRITON_URL", "triton:8001")
    for variable, value in TRITON_ONLY.items():
        monkeypatch.setenv(variable, value)
    settings = Settings()
    assert (
        settings.triton_keepalive_seconds,
        settings.triton_request_timeout_seconds,
        settings.triton_reconnect_timeout_seconds,
    ) == (5, 7, 9)
