"""The tiny random Kyutai model is a checkpoint in the published layout that moshi's loader loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from moshi.models import loaders

from earshot.engines import kyutai, kyutai_checkpoints, tiny_kyutai

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_kyutai.write_checkpoint(tmp_path_factory.mktemp("kyutai") / "tiny")


def test_tiny_checkpoint_has_the_files_and_keys_of_stt_1b_en_fr(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())

    assert config["model_type"] == "stt"
    assert config["dep_q"] == 0
    assert config["extra_heads_num_heads"] == 4
    assert set(config["stt_config"]) == {"audio_delay_seconds", "audio_silence_prefix_seconds"}
    for name in (config["mimi_name"], config["tokenizer_name"], "model.safetensors"):
        assert (checkpoint / name).is_file(), name
    assert config["mimi_name"] == "mimi-pytorch-e351c8d8@125.safetensors"


def test_moshis_checkpoint_info_loads_the_tiny_checkpoint_strictly(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    info = loaders.CheckpointInfo.from_hf_repo(
        "local",
        config_path=checkpoint / "config.json",
        moshi_weights=checkpoint / "model.safetensors",
        mimi_weights=checkpoint / config["mimi_name"],
        tokenizer=checkpoint / config["tokenizer_name"],
        mimi_config_path=checkpoint / config["mimi_config_name"],
    )

    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    mimi = info.get_mimi(device="cpu")

    assert lm.dep_q == 0
    assert len(lm.extra_heads) == 4
    assert mimi.frame_size == kyutai.FRAME_SAMPLES
    assert info.get_text_tokenizer().vocab_size() == config["text_card"]


def test_load_checkpoint_reads_the_weights_that_were_written(checkpoint: Path) -> None:
    written = tiny_kyutai.random_model(seed=0)

    model = kyutai_checkpoints.load_checkpoint(checkpoint)

    assert torch.equal(model.lm.text_linear.weight, written.lm.text_linear.weight)
    assert torch.equal(
        model.mimi.state_dict()["quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"],
        written.mimi.state_dict()["quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"],
    )
    assert model.audio_delay_seconds == 0.5


def test_a_checkpoint_without_its_mimi_weights_is_refused_naming_the_file(
    checkpoint: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in checkpoint.iterdir():
        if path.name != kyutai_checkpoints.MIMI_NAME:
            (broken / path.name).write_bytes(path.read_bytes())

    with pytest.raises(kyutai_checkpoints.CheckpointError, match="mimi-pytorch-e351c8d8@125"):
        kyutai_checkpoints.load_checkpoint(broken)


def test_a_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(kyutai_checkpoints.CheckpointError, match=r"config\.json is missing"):
        kyutai_checkpoints.load_checkpoint(tmp_path)


def test_the_tiny_model_is_built_once_under_the_cache_dir(tmp_path: Path) -> None:
    first = tiny_kyutai.ensure_tiny_checkpoint(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    again = tiny_kyutai.ensure_tiny_checkpoint(tmp_path)

    assert again == first
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
