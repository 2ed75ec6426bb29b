"""The work of a Triton streaming model, without Triton: sequences by correlation id, batched decodes.

May do: keep one decoder stream per sequence, call a :class:`BatchDecoder` on the calling thread,
load a decoder from a model's string ``parameters``. Must not: import ``triton_python_backend_utils``
(``model-repo/*/1/model.py`` only moves tensors between Triton and :meth:`SequenceTable.step`), use
asyncio or threads, read the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

from earshot.engines.recognizers import (
    BatchDecoder,
    EngineError,
    EngineOverloaded,
    Samples,
    StreamT,
)
from earshot.events import Recognition

# Starts the error message of a sequence refused for lack of capacity (retryable; nothing of it was
# taken): earshot's Triton client turns such errors into EngineOverloaded.
OVERLOADED_MARK = "overloaded: "


@dataclass(frozen=True, slots=True)
class Chunk:
    """One request of an ``execute`` call: a sequence's control flags and its audio."""

    corrid: int
    start: bool
    end: bool
    audio: Samples


@dataclass(frozen=True, slots=True)
class Said:
    """A recognition with the number (from 0) of the sequence's segment it belongs to."""

    text: str
    is_final: bool
    segment: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to answer one request: its recognitions, or an error message (then nothing else)."""

    said: list[Said] = field(default_factory=list)
    error: str | None = None


@dataclass(eq=False, slots=True)
class OpenSequence(Generic[StreamT]):
    """A sequence the model holds: its decoder state, its segment number, when it was last seen."""

    state: StreamT
    segment: int = 0
    last_seen: float = 0.0


class SequenceTable(Generic[StreamT]):
    """The open sequences of one model instance and the decoder that recognises them."""

    def __init__(
        self,
        decoder: BatchDecoder[StreamT],
        *,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve sequences with a decoder.

        Args:
            decoder: the engine's synchronous core.
            idle_seconds: the model's ``max_sequence_idle_microseconds`` in seconds: Triton forgets
                a sequence idle this long without telling the model, so the table forgets it too.
            clock: seconds, monotonic (tests pass their own).
        """
        self._decoder = decoder
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._sequences: dict[int, OpenSequence[StreamT]] = {}

    def __len__(self) -> int:
        return len(self._sequences)

    def step(self, chunks: Sequence[Chunk]) -> list[Outcome]:
        """Feed each chunk to its sequence and decode all of them in one batch.

        Returns:
            One outcome per chunk, in order. A chunk without START for a sequence the table does
            not hold gets an error; after END (or an error) the sequence is forgotten.
        """
        now = self._clock()
        self._forget_idle(now)
        outcomes = [Outcome() for _ in chunks]
        batch: list[tuple[int, int, OpenSequence[StreamT]]] = []
        for i, chunk in enumerate(chunks):
            try:
                batch.append((i, chunk.corrid, self._fed(chunk, now)))
            except EngineOverloaded as exc:
                outcomes[i] = Outcome(error=f"{OVERLOADED_MARK}{exc}")
            except EngineError as exc:
                self._sequences.pop(chunk.corrid, None)
                outcomes[i] = Outcome(error=str(exc))
        for (i, corrid, _), said in zip(batch, self._decode(batch), strict=True):
            outcomes[i] = said
            if chunks[i].end or said.error is not None:
                self._sequences.pop(corrid, None)
        return outcomes

    def _fed(self, chunk: Chunk, now: float) -> OpenSequence[StreamT]:
        if chunk.start:
            # A START for a held id restarts it: the client gave up on the old sequence.
            self._sequences[chunk.corrid] = OpenSequence(self._decoder.open())
        sequence = self._sequences.get(chunk.corrid)
        if sequence is None:
            raise EngineError(
                f"sequence {chunk.corrid} is unknown to this model instance: its first request "
                "must carry START (it may have been idle longer than the model allows)"
            )
        sequence.last_seen = now
        if chunk.audio.size:
            self._decoder.accept(sequence.state, chunk.audio)
        if chunk.end:
            self._decoder.finish(sequence.state)
        return sequence

    def _decode(self, batch: list[tuple[int, int, OpenSequence[StreamT]]]) -> list[Outcome]:
        if not batch:
            return []
        try:
            results = self._decoder.decode([sequence.state for _, _, sequence in batch])
        except Exception as exc:  # the decoder failed: every stream of the batch is lost
            return [Outcome(error=f"decoding failed: {exc}") for _ in batch]
        return [
            numbered(sequence, said) for (_, _, sequence), said in zip(batch, results, strict=True)
        ]

    def _forget_idle(self, now: float) -> None:
        stale = [c for c, s in self._sequences.items() if now - s.last_seen > self._idle_seconds]
        for corrid in stale:
            del self._sequences[corrid]


def numbered(sequence: OpenSequence[Any], recognitions: list[Recognition]) -> Outcome:
    """The outcome of recognitions of a sequence, numbered by its segments (finals count them)."""
    said = []
    for recognition in recognitions:
        said.append(Said(recognition.text, recognition.is_final, sequence.segment))
        if recognition.is_final:
            sequence.segment += 1
    return Outcome(said=said)


def _paraformer(parameters: Mapping[str, str]) -> BatchDecoder[Any]:
    # Imported here: a model of another engine must not need sherpa-onnx.
    from earshot.engines import paraformer, tiny_paraformer

    model_dir = parameters.get("model_dir", "")
    if not model_dir:
        raise EngineError("the model's parameters lack model_dir (encoder, decoder, tokens.txt)")
    defaults = paraformer.EndpointRules()
    endpoint = paraformer.EndpointRules(
        silence_without_text=_number(
            parameters, "rule1_min_trailing_silence", defaults.silence_without_text
        ),
        silence_after_text=_number(
            parameters, "rule2_min_trailing_silence", defaults.silence_after_text
        ),
        max_segment=_number(parameters, "rule3_min_utterance_length", defaults.max_segment),
    )
    num_threads = int(_number(parameters, "num_threads", 1))
    files = tiny_paraformer.ParaformerFiles.in_directory(Path(model_dir))
    return paraformer.ParaformerDecoder(files, num_threads=num_threads, endpoint=endpoint)


def _number(parameters: Mapping[str, str], key: str, default: float) -> float:
    raw = parameters.get(key, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise EngineError(f"model parameter {key}={raw!r} is not a number") from None


def _kyutai(parameters: Mapping[str, str]) -> BatchDecoder[Any]:
    import torch

    from earshot.engines import kyutai

    model_dir = parameters.get("model_dir", "")
    if not model_dir:
        raise EngineError("the model's parameters lack model_dir (a kyutai/stt-1b-en_fr layout)")
    defaults = kyutai.KyutaiOptions()
    options = kyutai.KyutaiOptions(
        max_streams=int(_number(parameters, "max_streams", defaults.max_streams)),
        pause_threshold=_number(parameters, "pause_threshold", defaults.pause_threshold),
        pause_seconds=_number(parameters, "pause_seconds", defaults.pause_seconds),
        cuda_graphs=parameters.get("cuda_graphs", "true").lower() != "false",
    )
    if parameters.get("num_threads", "").strip():
        # The stub process serves this one model: its torch threads are the model's to set.
        torch.set_num_threads(int(_number(parameters, "num_threads", 1)))
    return kyutai.load_kyutai(
        model_dir=Path(model_dir), cache_dir=Path(model_dir), device=_device(parameters),
        options=options,
    )  # fmt: skip


def _device(parameters: Mapping[str, str]) -> str:
    # Triton places each instance: KIND_GPU instances learn their GPU from the instance arguments.
    if parameters.get("device"):
        return parameters["device"]
    if parameters.get("instance_kind", "").upper() == "GPU":
        return f"cuda:{parameters.get('instance_device_id', '0') or '0'}"
    return "cpu"


_LOADERS: dict[str, Callable[[Mapping[str, str]], BatchDecoder[Any]]] = {
    "paraformer": _paraformer,
    "kyutai": _kyutai,
}


def load_decoder(engine: str, parameters: Mapping[str, str]) -> BatchDecoder[Any]:
    """Load an engine's decoder from a Triton model's string ``parameters``.

    Args:
        engine: ``paraformer`` or ``kyutai``.
        parameters: both take ``model_dir`` (required) and ``num_threads``. paraformer: sherpa's
            endpoint rules ``rule1_min_trailing_silence``, ``rule2_min_trailing_silence``,
            ``rule3_min_utterance_length`` (seconds). kyutai: ``max_streams``,
            ``pause_threshold``, ``pause_seconds``, ``cuda_graphs``, ``device`` (default: the
            instance's GPU from ``instance_kind``/``instance_device_id``, else ``cpu``).
            Empty values take the defaults.

    Raises:
        EngineError: an unknown engine, a missing or malformed parameter.
    """
    try:
        loader = _LOADERS[engine]
    except KeyError:
        raise EngineError(f"no Triton model loader for engine {engine!r}") from None
    return loader(parameters)


def string_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a model configuration (Triton's JSON form) as plain strings."""
    raw: Mapping[str, Mapping[str, str]] = model_config.get("parameters", {})
    return {key: value.get("string_value", "") for key, value in raw.items()}


def idle_seconds(model_config: Mapping[str, Any]) -> float:
    """The sequence idle timeout of a model configuration (Triton's JSON form), in seconds."""
    batching: Mapping[str, Any] = model_config.get("sequence_batching", {})
    return int(batching.get("max_sequence_idle_microseconds", 1_000_000)) / 1e6
