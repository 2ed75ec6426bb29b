"""The published Kyutai STT checkpoint layout, and loading one from a local directory.

May do: read ``config.json`` and the files it names from one directory, build moshi's Mimi codec, LM
and text tokenizer on a device. Must not: download (every path is resolved in the directory, so
moshi's hub code is never reached), run inference, read the environment.

The layout is the one of ``kyutai/stt-1b-en_fr`` on the Hugging Face hub::

    config.json                              LM hyper-parameters + the keys below
    model.safetensors                        the LM (``moshi_name`` overrides the name)
    mimi-pytorch-e351c8d8@125.safetensors    the Mimi codec (``mimi_name``)
    tokenizer_en_fr_audio_8000.model         sentencepiece text tokenizer (``tokenizer_name``)

plus, optionally, ``mimi_config_name`` (a Mimi other than the published one: the tiny test model),
``stt_config`` (``audio_delay_seconds``, ``audio_silence_prefix_seconds``) and
``extra_heads_num_heads`` (the semantic VAD heads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from sentencepiece import SentencePieceProcessor

from earshot.engines.recognizers import EngineError

CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
MIMI_NAME = "mimi-pytorch-e351c8d8@125.safetensors"
TOKENIZER_NAME = "tokenizer_en_fr_audio_8000.model"


class CheckpointError(EngineError):
    """A model directory is not a usable Kyutai STT checkpoint."""


@dataclass(frozen=True, slots=True)
class KyutaiModel:
    """A loaded Kyutai STT model: what :class:`earshot.engines.kyutai.KyutaiDecoder` runs.

    Attributes:
        mimi: the audio codec (24 kHz PCM -> audio tokens, 12.5 frames per second).
        lm: the language model with ``dep_q == 0`` (text out only) and, usually, VAD extra heads.
        tokenizer: turns the LM's text tokens into word pieces.
        audio_delay_seconds: how far the text lags the audio; a stream end is flushed with at
            least this much silence.
        silence_prefix_seconds: silence the model expects before a stream's first audio.
    """

    mimi: MimiModel
    lm: LMModel
    tokenizer: SentencePieceProcessor
    audio_delay_seconds: float
    silence_prefix_seconds: float


def load_checkpoint(
    model_dir: Path, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> KyutaiModel:
    """Load a Kyutai STT checkpoint in the published layout through moshi's own loader.

    Args:
        model_dir: the directory holding ``config.json`` and the files it names.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: the LM's weights; default bfloat16 on CUDA (as published), float32 on CPU.

    Raises:
        CheckpointError: a file is missing, the config is not JSON, or the model is not an STT
            model (it generates audio: ``dep_q > 0``).
    """
    config_path = model_dir / CONFIG_NAME
    config = _read_config(config_path)
    if config.get("dep_q", 0) != 0:
        raise CheckpointError(f"{config_path}: dep_q is {config['dep_q']}; an STT model has 0")
    mimi_config = config.get("mimi_config_name")
    info = loaders.CheckpointInfo.from_hf_repo(
        str(model_dir),
        config_path=config_path,
        moshi_weights=_file(model_dir, config.get("moshi_name", MODEL_NAME)),
        mimi_weights=_file(model_dir, config.get("mimi_name", MIMI_NAME)),
        tokenizer=_file(model_dir, config.get("tokenizer_name", TOKENIZER_NAME)),
        mimi_config_path=_file(model_dir, mimi_config) if mimi_config else None,
    )
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    stt = info.stt_config
    return KyutaiModel(
        mimi=info.get_mimi(device=device),
        lm=info.get_moshi(device=device, dtype=dtype),
        tokenizer=info.get_text_tokenizer(),
        audio_delay_seconds=float(stt.get("audio_delay_seconds", 0.0)),
        silence_prefix_seconds=float(stt.get("audio_silence_prefix_seconds", 0.0)),
    )


def _read_config(path: Path) -> dict[str, object]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a Kyutai STT checkpoint directory") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return config


def _file(model_dir: Path, name: object) -> Path:
    path = model_dir / str(name)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (named by {model_dir / CONFIG_NAME})")
    return path
