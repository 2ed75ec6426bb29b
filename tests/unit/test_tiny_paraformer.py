"""The tiny random-weight Paraformer: sherpa-onnx loads it and it behaves like a recogniser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import sherpa_onnx

from earshot.engines import tiny_paraformer
from earshot.engines.recognizers import Samples

RATE = 16_000


def syllables(seconds: float, *, pitch: float = 120.0) -> Samples:
    """Speech-like audio: a buzzing voice at ``pitch`` Hz that swells and fades 4 times a second."""
    t = np.arange(int(seconds * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 20))
    return (0.1 * voice * np.sin(4 * np.pi * t) ** 2).astype(np.float32)


def tone(seconds: float, *, hertz: float = 440.0, amplitude: float = 0.1) -> Samples:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hertz * t)).astype(np.float32)


def noise(seconds: float, *, amplitude: float = 0.05, seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def silence(seconds: float) -> Samples:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tiny_paraformer.ParaformerFiles:
    return tiny_paraformer.build_tiny_paraformer(tmp_path_factory.mktemp("tiny"))


def recognizer_for(files: tiny_paraformer.ParaformerFiles) -> sherpa_onnx.OnlineRecognizer:
    return sherpa_onnx.OnlineRecognizer.from_paraformer(
        tokens=str(files.tokens),
        encoder=str(files.encoder),
        decoder=str(files.decoder),
        num_threads=1,
    )


def transcribe_together(
    recognizer: sherpa_onnx.OnlineRecognizer, signals: list[Samples]
) -> list[str]:
    """Decode the signals as streams of one batch: every ready stream in each decode_streams call."""
    streams = [recognizer.create_stream() for _ in signals]
    for stream, signal in zip(streams, signals, strict=True):
        stream.accept_waveform(RATE, signal)
        stream.accept_waveform(RATE, silence(1.0))
        stream.input_finished()
    while ready := [s for s in streams if recognizer.is_ready(s)]:
        recognizer.decode_streams(ready)
    return [str(recognizer.get_result(s)) for s in streams]


def transcribe(files: tiny_paraformer.ParaformerFiles, signal: Samples) -> str:
    return transcribe_together(recognizer_for(files), [signal])[0]


def test_encoder_carries_every_metadata_key_sherpa_reads(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    metadata = {p.key: p.value for p in onnx.load(model.encoder).metadata_props}

    assert set(tiny_paraformer.ENCODER_METADATA_KEYS) <= set(metadata)
    assert metadata["lfr_window_size"] == "7"
    assert metadata["lfr_window_shift"] == "6"
    assert len(metadata["neg_mean"].split(",")) == 560
    assert len(metadata["inv_stddev"].split(",")) == 560
    assert int(metadata["vocab_size"]) == len(model.tokens.read_text().splitlines())


def test_model_is_small_and_its_tokens_are_readable_words(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    assert model.encoder.stat().st_size + model.decoder.stat().st_size < 300_000
    words = [line.split()[0] for line in model.tokens.read_text().splitlines()[3:]]
    assert len(words) > 100
    assert all(w.isalpha() and w.islower() for w in words)


def test_sherpa_loads_the_model_and_transcribes_speech_like_audio(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    text = transcribe(model, syllables(2.0))

    assert len(text.split()) >= 3


@pytest.mark.parametrize(
    "signal",
    [tone(1.5), noise(1.5), syllables(1.5, pitch=200.0)],
    ids=["tone", "noise", "syllables"],
)
def test_loud_signals_give_text(model: tiny_paraformer.ParaformerFiles, signal: Samples) -> None:
    assert transcribe(model, signal)


@pytest.mark.parametrize(
    "signal",
    [silence(3.0), noise(3.0, amplitude=0.001), tone(3.0, amplitude=0.003)],
    ids=["digital-silence", "noise-at-60-dBFS", "faint-tone"],
)
def test_silence_and_faint_signals_give_no_text(
    model: tiny_paraformer.ParaformerFiles, signal: Samples
) -> None:
    assert transcribe(model, signal) == ""


def test_different_audio_gives_different_text(model: tiny_paraformer.ParaformerFiles) -> None:
    texts = {transcribe(model, s) for s in (tone(2.0), noise(2.0), syllables(2.0))}

    assert len(texts) == 3


def test_decoding_three_streams_in_one_batch_equals_decoding_each_alone(
    model: tiny_paraformer.ParaformerFiles,
) -> None:
    signals = [syllables(2.5, pitch=110.0), noise(1.2), tone(3.1, hertz=300.0)]
    recognizer = recognizer_for(model)

    together = transcribe_together(recognizer, signals)
    alone = [transcribe_together(recognizer, [s])[0] for s in signals]

    assert together == alone
    assert all(together)


def test_the_same_seed_builds_the_same_model_and_another_seed_another(tmp_path: Path) -> None:
    first = tiny_paraformer.build_tiny_paraformer(tmp_path / "a", seed=7)
    again = tiny_paraformer.build_tiny_paraformer(tmp_path / "b", seed=7)
    other = tiny_paraformer.build_tiny_paraformer(tmp_path / "c", seed=8)

    assert first.encoder.read_bytes() == again.encoder.read_bytes()
    assert first.decoder.read_bytes() == again.decoder.read_bytes()
    assert transcribe(first, syllables(2.0)) == transcribe(again, syllables(2.0))
    assert transcribe(first, syllables(2.0)) != transcribe(other, syllables(2.0))


def test_model_directory_lookup_prefers_int8_files(tmp_path: Path) -> None:
    for name in ("encoder.onnx", "encoder.int8.onnx", "decoder.onnx", "tokens.txt"):
        (tmp_path / name).write_text("x")

    files = tiny_paraformer.ParaformerFiles.in_directory(tmp_path)

    assert files == tiny_paraformer.ParaformerFiles(
        encoder=tmp_path / "encoder.int8.onnx",
        decoder=tmp_path / "decoder.onnx",
        tokens=tmp_path / "tokens.txt",
    )


def test_model_directory_lookup_names_every_missing_file(tmp_path: Path) -> None:
    (tmp_path / "encoder.int8.onnx").write_text("x")

    with pytest.raises(tiny_paraformer.ModelFilesMissing) as raised:
        tiny_paraformer.ParaformerFiles.in_directory(tmp_path)

    assert "decoder.int8.onnx or decoder.onnx" in str(raised.value)
    assert "tokens.txt" in str(raised.value)
    assert "encoder" not in str(raised.value).split("lacks")[1]
