"""The files of a streaming Paraformer model, and a tiny random-weight one that sherpa-onnx loads.

May do: find the files of a model directory; build ONNX graphs with ``onnx.helper`` and write them,
with a ``tokens.txt``, into a directory. Must not: run inference, download, import ``sherpa_onnx``.

The tiny model is untrained but behaves like speech recognition where tests need it to:

* its CIF weights (``alphas``) follow the energy of each 70 ms feature frame: zero below about
  -50 dBFS, so silence yields no tokens and sherpa's endpoint rules end the segment; loud frames
  fire a token about every 0.25 s;
* each token is the arg-max of a fixed random projection of the acoustic embedding, so the text
  depends on the spectrum of the input and differs between inputs;
* the tokens are short English words, the weights come from ``seed`` (same seed, same model), and
  the two graphs together weigh about 120 KB.

The graphs follow the contract of sherpa-onnx's streaming Paraformer (``OnlineParaformerModel``):
encoder ``speech [B,T,560] f32, speech_lengths [B] i32 -> enc [B,T,D], enc_len [B], alphas [B,T]``;
decoder ``enc, enc_len, acoustic_embeds [B,N,D], acoustic_embeds_len [B], N caches [B,D,K-1] ->
logits [B,N,V], sample_ids [B,N] i64, N caches``. sherpa reads the encoder metadata keys below and
ends the whole process when one is missing, hence :data:`ENCODER_METADATA_KEYS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

ENCODER_METADATA_KEYS = (
    "vocab_size",
    "lfr_window_size",
    "lfr_window_shift",
    "encoder_output_size",
    "decoder_num_blocks",
    "decoder_kernel_size",
    "neg_mean",
    "inv_stddev",
)

_FBANK_DIM = 80
_LFR_WINDOW = 7
_LFR_SHIFT = 6
_INPUT_DIM = _FBANK_DIM * _LFR_WINDOW
_ENCODER_DIM = 32
_DECODER_BLOCKS = 2
_DECODER_KERNEL = 3

# Energies are log-sums of the 560 log-mel values of one LFR frame (sherpa feeds int16-scaled
# samples). Measured: digital silence -9.6, noise at -60 dBFS 20, at -40 dBFS 24.7, a 440 Hz tone
# at -20 dBFS 24.6, espeak speech 25-28 (pauses ~12). The ramp below puts -50 dBFS at zero weight.
_SILENT_ENERGY = 22.0
_LOUD_ENERGY = 24.0
_MAX_ALPHA = 0.25

# ONNX Runtime builds that sherpa-onnx 1.10+ ships all read IR 8 / opset 17.
_IR_VERSION = 8
_OPSET = 17

_SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")
_WORD_TEXT = """
a about after all also and any apple are as at away back bad be bear bed bell big bird black
blue boat book box boy bring brown but by call can car cat city cold come cup dark day deep did
do dog door down draw dry each early east eat egg end even eye far fast few find fire fish five
fly for four free from full fun game get girl give go gold good green grow had hand happy hat
have he help her here high hill his hold home hot how ice if in into is it jump just keep kind
king know lake land last late leaf left light like line lion little long look low made make man
many map may me milk moon more most much must my name near new next nice night no north not now
of off old on one open or our out over own park pen pick pig play put rain red ride right river
road rock room run sad said same sand saw say sea see seven she ship shoe show sing sit six sky
slow small snow so some song soon south star stop sun take tall ten that the then there they
thing this three time to top town tree two up us very walk warm was water way we well went west
what when white who why wind with wolf word work yes you young zoo
"""
_WORDS = _WORD_TEXT.split()


class ModelFilesMissing(FileNotFoundError):
    """A model directory lacks a file the engine needs."""


@dataclass(frozen=True, slots=True)
class ParaformerFiles:
    """The three files of a streaming Paraformer model."""

    encoder: Path
    decoder: Path
    tokens: Path

    @classmethod
    def in_directory(cls, directory: Path) -> ParaformerFiles:
        """Find a model's files in a directory, preferring the int8 variants when present.

        Args:
            directory: a directory laid out like sherpa-onnx's published model
                (``encoder.int8.onnx`` or ``encoder.onnx``, the same for the decoder, ``tokens.txt``).

        Returns:
            The files.

        Raises:
            ModelFilesMissing: naming every file that was looked for and not found.
        """
        encoder = _first_existing(directory, "encoder.int8.onnx", "encoder.onnx")
        decoder = _first_existing(directory, "decoder.int8.onnx", "decoder.onnx")
        tokens = _first_existing(directory, "tokens.txt")
        missing = [
            wanted
            for found, wanted in (
                (encoder, "encoder.int8.onnx or encoder.onnx"),
                (decoder, "decoder.int8.onnx or decoder.onnx"),
                (tokens, "tokens.txt"),
            )
            if found is None
        ]
        if encoder is None or decoder is None or tokens is None:
            raise ModelFilesMissing(
                f"the Paraformer model directory {directory} lacks {', '.join(missing)}"
            )
        return cls(encoder=encoder, decoder=decoder, tokens=tokens)


def _first_existing(directory: Path, *names: str) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def build_tiny_paraformer(directory: Path, *, seed: int = 0) -> ParaformerFiles:
    """Write a tiny random-weight streaming Paraformer (fp32) into a directory.

    Args:
        directory: where to write ``encoder.onnx``, ``decoder.onnx`` and ``tokens.txt``;
            created when missing, existing files of those names are replaced.
        seed: the weights' random seed; the same seed always gives the same model.

    Returns:
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocabulary = [*_SPECIAL_TOKENS, *_WORDS]
    files = ParaformerFiles(
        encoder=directory / "encoder.onnx",
        decoder=directory / "decoder.onnx",
        tokens=directory / "tokens.txt",
    )
    onnx.save(_encoder_model(rng, vocab_size=len(vocabulary)), files.encoder)
    onnx.save(_decoder_model(rng, vocab_size=len(vocabulary)), files.decoder)
    files.tokens.write_text("".join(f"{t} {i}\n" for i, t in enumerate(vocabulary)))
    return files


def _encoder_model(rng: np.random.Generator, *, vocab_size: int) -> onnx.ModelProto:
    # A fixed random projection of the mean-removed features: the spectrum's shape, not its
    # loudness, picks the embedding.
    projection = rng.standard_normal((_INPUT_DIM, _ENCODER_DIM)) * (3.0 / math.sqrt(_INPUT_DIM))
    initializers = [
        _tensor("projection", projection),
        _tensor("silent_energy", np.array(_SILENT_ENERGY)),
        _tensor("energy_range", np.array(_LOUD_ENERGY - _SILENT_ENERGY)),
        _tensor("zero", np.array(0.0)),
        _tensor("one", np.array(1.0)),
        _tensor("max_alpha", np.array(_MAX_ALPHA)),
    ]
    nodes = [
        helper.make_node("ReduceLogSumExp", ["speech"], ["energy"], axes=[2], keepdims=0),
        helper.make_node("Sub", ["energy", "silent_energy"], ["above_silence"]),
        helper.make_node("Div", ["above_silence", "energy_range"], ["loudness"]),
        helper.make_node("Clip", ["loudness", "zero", "one"], ["clipped_loudness"]),
        helper.make_node("Mul", ["clipped_loudness", "max_alpha"], ["alphas"]),
        helper.make_node("ReduceMean", ["speech"], ["feature_mean"], axes=[2], keepdims=1),
        helper.make_node("Sub", ["speech", "feature_mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "projection"], ["projected"]),
        helper.make_node("Tanh", ["projected"], ["enc"]),
        helper.make_node("Identity", ["speech_lengths"], ["enc_len"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_paraformer_encoder",
        inputs=[
            _value("speech", TensorProto.FLOAT, ["batch", "frames", _INPUT_DIM]),
            _value("speech_lengths", TensorProto.INT32, ["batch"]),
        ],
        outputs=[
            _value("enc", TensorProto.FLOAT, ["batch", "frames", _ENCODER_DIM]),
            _value("enc_len", TensorProto.INT32, ["batch"]),
            _value("alphas", TensorProto.FLOAT, ["batch", "frames"]),
        ],
        initializer=initializers,
    )
    model = _model(graph)
    helper.set_model_props(model, _encoder_metadata(vocab_size))
    return model


def _encoder_metadata(vocab_size: int) -> dict[str, str]:
    # sherpa multiplies inv_stddev by sqrt(encoder_output_size); dividing here keeps the features
    # in plain log-mel units, which the energy thresholds above are measured in.
    inv_stddev = 1.0 / math.sqrt(_ENCODER_DIM)
    metadata = {
        "vocab_size": str(vocab_size),
        "lfr_window_size": str(_LFR_WINDOW),
        "lfr_window_shift": str(_LFR_SHIFT),
        "encoder_output_size": str(_ENCODER_DIM),
        "decoder_num_blocks": str(_DECODER_BLOCKS),
        "decoder_kernel_size": str(_DECODER_KERNEL),
        "neg_mean": ",".join(["0"] * _INPUT_DIM),
        "inv_stddev": ",".join([repr(inv_stddev)] * _INPUT_DIM),
    }
    return metadata


def _decoder_model(rng: np.random.Generator, *, vocab_size: int) -> onnx.ModelProto:
    output_layer = rng.standard_normal((_ENCODER_DIM, vocab_size))
    # Unit-norm columns so that no word wins merely by having a long weight vector.
    output_layer /= np.linalg.norm(output_layer, axis=0, keepdims=True)
    # The blank (id 0) would be dropped by sherpa and <s>, </s> are not words: never pick them.
    bias = np.zeros(vocab_size)
    bias[: len(_SPECIAL_TOKENS)] = -1e4
    cache_shape: list[str | int] = ["batch", _ENCODER_DIM, _DECODER_KERNEL - 1]
    caches = range(_DECODER_BLOCKS)
    nodes = [
        helper.make_node("MatMul", ["acoustic_embeds", "output_layer"], ["scores"]),
        helper.make_node("Add", ["scores", "output_bias"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["sample_ids"], axis=2, keepdims=0),
        # The caches pass through unchanged: the tiny decoder has no memory across chunks.
        *(helper.make_node("Identity", [f"in_cache_{i}"], [f"out_cache_{i}"]) for i in caches),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_paraformer_decoder",
        inputs=[
            _value("enc", TensorProto.FLOAT, ["batch", "frames", _ENCODER_DIM]),
            _value("enc_len", TensorProto.INT32, ["batch"]),
            _value("acoustic_embeds", TensorProto.FLOAT, ["batch", "tokens", _ENCODER_DIM]),
            _value("acoustic_embeds_len", TensorProto.INT32, ["batch"]),
            *(_value(f"in_cache_{i}", TensorProto.FLOAT, cache_shape) for i in caches),
        ],
        outputs=[
            _value("logits", TensorProto.FLOAT, ["batch", "tokens", vocab_size]),
            _value("sample_ids", TensorProto.INT64, ["batch", "tokens"]),
            *(_value(f"out_cache_{i}", TensorProto.FLOAT, cache_shape) for i in caches),
        ],
        initializer=[_tensor("output_layer", output_layer), _tensor("output_bias", bias)],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="earshot.tiny_paraformer",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(name: str, values: npt.NDArray[np.float64]) -> onnx.TensorProto:
    return numpy_helper.from_array(values.astype(np.float32), name)


def _value(name: str, element_type: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, shape)
