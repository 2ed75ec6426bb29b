"""Random-weight Kyutai STT models, tiny (for tests) or 1B-sized (for benchmarks).

May do: build moshi's Mimi and LM with ``load_weight``-free loaders, shape a few of their weights,
train a small sentencepiece tokenizer, write all of it in the published checkpoint layout
(:mod:`earshot.engines.kyutai_checkpoints`). Must not: run a recogniser, download anything.

An untrained model says arbitrary things; tests need it to behave like speech recognition where it
matters, so a few weights are set by hand (same ``seed``, same model):

* the codec hears its input (see :func:`_make_codec_hear`): audio quieter than about -40 dBFS
  gives one first code, louder audio others (moshi leaves codebooks zero until training, which would
  map every input to code 0);
* one dimension of the LM's residual stream (:data:`_MARK`) carries only "is the first audio code
  one that silence produces?": every embedding but codebook 0 is zero there, the transformer never
  writes to it, and codebook 0 puts ``+A`` there for the codes silence gives and ``-A`` for the
  others;
* the third VAD extra head (the pause head upstream reads) and the text padding logit read that
  dimension: silence gives a pause probability near 0.9 and padding (no text), other audio a pause
  probability near 0 and a word piece (arbitrary but deterministic) every 80 ms.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import sentencepiece
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from moshi.quantization.core_vq import EuclideanCodebook
from moshi.quantization.vq import SplitResidualVectorQuantizer
from moshi.utils.compile import no_compile
from safetensors.torch import save_file

from earshot.engines import kyutai_checkpoints
from earshot.engines.kyutai_checkpoints import KyutaiModel

MIMI_CONFIG_NAME = "mimi_config.json"
TOKENIZER_NAME = "tokenizer_tiny.model"

_MARK = 0
_PAUSE_HEAD = 2
_TEXT_PADDING_ID = 3
_SILENCE_PROBE_FRAMES = 25
_WORDS = ("hello", "world", "yes", "no", "call", "bonjour", "merci", "oui", "non", "demain")


@dataclass(frozen=True, slots=True)
class Size:
    """The hyper-parameters of a random model: an LM config and, optionally, a Mimi config."""

    lm: Mapping[str, Any]
    mimi: Mapping[str, Any] | None = None
    stt: Mapping[str, float] = field(
        default_factory=lambda: {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}
    )


# The published stt-1b-en_fr config.json, less its file names and model id.
_STT_1B_EN_FR = """{
 "card": 2048, "n_q": 32, "dep_q": 0, "dim": 2048, "text_card": 8000,
 "existing_text_padding_id": 3, "num_heads": 16, "num_layers": 16, "hidden_scale": 4.125,
 "causal": true, "layer_scale": null, "context": 750, "max_period": 100000.0, "gating": "silu",
 "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
 "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_dim_feedforward": null,
 "depformer_multi_linear": true, "depformer_pos_emb": "none", "depformer_weights_per_step": true,
 "conditioners": {}, "cross_attention": false, "extra_heads_num_heads": 4, "extra_heads_dim": 6
}"""

# The published Mimi's strides (24 kHz -> 12.5 Hz, 1920-sample frames) with tiny widths.
_TINY_MIMI = """{
 "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
 "seanet": {
  "channels": 1, "dimension": 16, "causal": true, "n_filters": 2, "n_residual_layers": 1,
  "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
  "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
  "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": true
 },
 "transformer": {
  "d_model": 16, "num_heads": 2, "num_layers": 1, "causal": true, "layer_scale": 0.01,
  "context": 250, "conv_layout": true, "max_period": 10000, "gating": "none",
  "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 32,
  "input_dimension": 16, "output_dimensions": [16]
 },
 "quantizer": {"dimension": 8, "n_q": 8, "bins": 32, "input_dimension": 16, "output_dimension": 16}
}"""


def _lm_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_STT_1B_EN_FR) | overrides
    config["delays"] = [0] * (config["n_q"] + 1)
    return config


TINY = Size(
    lm=_lm_config(
        card=32,
        n_q=8,
        dim=32,
        text_card=64,
        num_heads=2,
        num_layers=2,
        hidden_scale=2,
        context=250,
        depformer_dim=16,
        depformer_num_heads=2,
        depformer_num_layers=1,
    ),
    mimi=json.loads(_TINY_MIMI),
)
"""About 60 thousand parameters (LM and Mimi): an 80 ms step of 8 streams takes ~6 ms on one core."""

ONE_B = Size(lm=_lm_config())
"""The published ``stt-1b-en_fr`` shapes (about 1 billion LM parameters) and the published Mimi."""

SIZES = {"tiny": TINY, "1b": ONE_B}


def random_model(
    size: Size = TINY, *, seed: int = 0, device: str = "cpu", dtype: torch.dtype | None = None
) -> KyutaiModel:
    """Build a shaped random model in memory (the benchmark's way: nothing written)."""
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    mimi, lm, tokenizer = _build(size, seed=seed, device=device, dtype=dtype)
    return KyutaiModel(
        mimi=mimi,
        lm=lm,
        tokenizer=sentencepiece.SentencePieceProcessor(model_proto=tokenizer),
        audio_delay_seconds=size.stt["audio_delay_seconds"],
        silence_prefix_seconds=size.stt["audio_silence_prefix_seconds"],
    )


def write_checkpoint(directory: Path, size: Size = TINY, *, seed: int = 0) -> Path:
    """Write a shaped random model into ``directory`` in the published layout.

    Returns:
        ``directory``, which :func:`kyutai_checkpoints.load_checkpoint` loads.
    """
    mimi, lm, tokenizer = _build(size, seed=seed, device="cpu", dtype=torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(size.lm) | {
        "model_type": "stt",
        "stt_config": dict(size.stt),
        "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
        "mimi_name": kyutai_checkpoints.MIMI_NAME,
        "tokenizer_name": TOKENIZER_NAME,
    }
    if size.mimi is not None:
        config["mimi_config_name"] = MIMI_CONFIG_NAME
        (directory / MIMI_CONFIG_NAME).write_text(json.dumps(size.mimi, indent=1))
    save_file(_state(mimi), str(directory / kyutai_checkpoints.MIMI_NAME))
    save_file(_state(lm), str(directory / kyutai_checkpoints.MODEL_NAME))
    (directory / TOKENIZER_NAME).write_bytes(tokenizer)
    (directory / kyutai_checkpoints.CONFIG_NAME).write_text(json.dumps(config, indent=1))
    return directory


def ensure_tiny_checkpoint(cache_dir: Path) -> Path:
    """The tiny checkpoint under ``cache_dir``, written on first use (safe across processes)."""
    # Bump the version when the builder changes what it writes.
    target = cache_dir / "kyutai-tiny-v1"
    if (target / kyutai_checkpoints.CONFIG_NAME).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
        # config.json is written last and the directory renamed whole: a reader never sees half.
        built = write_checkpoint(Path(scratch) / "model")
        try:
            os.rename(built, target)
        except OSError:
            if not (target / kyutai_checkpoints.CONFIG_NAME).is_file():
                raise
    return target


def _build(
    size: Size, *, seed: int, device: str, dtype: torch.dtype
) -> tuple[MimiModel, LMModel, bytes]:
    torch.manual_seed(seed)
    lm_config = dict(size.lm)
    mimi = loaders.get_mimi(
        None, dict(size.mimi) if size.mimi else None, device=device, num_codebooks=lm_config["n_q"]
    )
    _make_codec_hear(mimi)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device=device, dtype=dtype)
    _shape_lm(lm, _silence_codes(mimi))
    return mimi, lm, _tokenizer(lm_config["text_card"])


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.contiguous() for name, tensor in module.state_dict().items()}


@torch.no_grad()
def _make_codec_hear(mimi: MimiModel) -> None:
    """Make the random codec respond to its input, and map quiet audio to one code.

    With PyTorch's default initialisation the signal fades through SEANet's twenty-odd layers and
    the biases decide the latent; He-scaled weights without biases keep it (silence gives a zero
    latent). The first (semantic) codebook gets a zero entry, which everything quieter than about
    -40 dBFS falls on, and random entries twice as far out as -40 dBFS noise lands.
    """
    for module in mimi.modules():
        if isinstance(module, torch.nn.Conv1d):
            fan_in = module.weight.shape[1] * module.weight.shape[2]
            module.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                module.bias.zero_()
    quantizer = cast(SplitResidualVectorQuantizer, mimi.quantizer)
    radius = 2.0 * _quiet_latent_norm(mimi, quantizer)
    for rvq, first in ((quantizer.rvq_first, True), (quantizer.rvq_rest, False)):
        for codebook in rvq.modules():
            if isinstance(codebook, EuclideanCodebook):
                entries = torch.nn.functional.normalize(codebook.embedding_sum.normal_(), dim=1)
                codebook.embedding_sum.copy_(entries * radius)
                if first:
                    codebook.embedding_sum[0] = 0.0
                codebook.cluster_usage.fill_(1.0)
                codebook._initialized.fill_(1.0)
                codebook.register_buffer("_embedding", None, persistent=False)


def _quiet_latent_norm(mimi: MimiModel, quantizer: SplitResidualVectorQuantizer) -> float:
    noise = 0.01 * torch.randn(1, 1, 10 * mimi.frame_size, device=_device(mimi))
    with no_compile():
        latent = quantizer.rvq_first.input_proj(mimi._encode_to_unquantized_latent(noise))
    return float(latent.norm(dim=1).mean())


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def _silence_codes(mimi: MimiModel) -> torch.Tensor:
    """The codebook-0 codes that digital silence gives (the codec settles after a few frames)."""
    silence = torch.zeros(1, 1, mimi.frame_size, device=_device(mimi))
    with no_compile(), mimi.streaming(1):
        codes = [mimi.encode(silence)[0, 0, 0] for _ in range(_SILENCE_PROBE_FRAMES)]
    silent: torch.Tensor = torch.unique(torch.stack(codes))
    return silent


@torch.no_grad()
def _shape_lm(lm: LMModel, silence_codes: torch.Tensor) -> None:
    dim = lm.dim
    big = 4.0 * math.sqrt(dim)
    for embedding in [*lm.emb, lm.text_emb]:
        _weight(embedding)[:, _MARK] = 0.0
    first = _weight(lm.emb[0])
    first[:, _MARK] = -big
    first[silence_codes, _MARK] = big
    first[lm.initial_token_id, _MARK] = big
    for name, parameter in lm.transformer.named_parameters():
        if name.endswith(("out_projs.0.weight", "linear_out.weight", "linear2.weight")):
            parameter[_MARK, :] = 0.0
    # After the output RMS norm the mark is about +-sqrt(dim): these scales give logits of +-4.
    pause = _weight(lm.extra_heads[_PAUSE_HEAD])
    pause.zero_()
    pause[0, _MARK] = 4.0 / math.sqrt(dim)
    lm.text_linear.weight[:, _MARK] = 0.0
    lm.text_linear.weight[_TEXT_PADDING_ID, _MARK] = 20.0 / math.sqrt(dim)


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _tokenizer(vocab_size: int) -> bytes:
    # A word model over _WORDS and filler words, exactly vocab_size pieces; ids 0-3 are the
    # specials, as in Kyutai's tokenizers (3 is the LM's text padding).
    words = [*_WORDS, *(f"w{i}" for i in range(vocab_size))][: vocab_size - 4]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(words * 2),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="word",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=_TEXT_PADDING_ID,
        character_coverage=1.0,
        minloglevel=2,
    )
    return model.getvalue()
