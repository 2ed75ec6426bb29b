"""The streaming Paraformer engine in process: sherpa-onnx's ``OnlineRecognizer`` as a BatchDecoder.

May do: load a model with sherpa-onnx and run inference on the calling thread; build the tiny model
into the cache directory. Must not: use asyncio or start threads (:mod:`earshot.engines.batching`
runs it on workers, the Triton model calls it from ``execute``), read the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sherpa_onnx

from earshot.engines import tiny_paraformer
from earshot.engines.recognizers import EngineError, Samples
from earshot.events import Recognition
from earshot.settings import DEFAULTS, Settings

SAMPLE_RATE = 16_000

# sherpa decodes 0.61 s chunks and counts a chunk's last 0.18 s only with the next one, so audio
# at the end of a stream needs up to ~0.85 s after it before it is decoded; zeros never add text.
# (A tuple: sherpa's binding converts it faster than an ndarray: see ParaformerDecoder.accept.)
_TAIL_PADDING = (0.0,) * SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class EndpointRules:
    """When sherpa ends a segment (its endpoint rules 1 to 3), in seconds.

    sherpa measures a Paraformer's trailing silence from the start of the last 0.6 s chunk that
    produced a token, so it moves in steps of 0.6 s and is already 0.6 s after every chunk with
    speech: ``silence_after_text`` must lie above 0.6, and every value below 1.2 behaves the same.
    The default 1.0 ends a segment after one chunk without tokens, i.e. after 0.5 to 1.4 s of
    silence. sherpa's own default 1.2 waits one chunk more: 120 frames of 10 ms add up, in
    float32, to just below 1.2.
    """

    silence_without_text: float = DEFAULTS["endpoint_silence_without_text_seconds"].earshot
    silence_after_text: float = DEFAULTS["endpoint_silence_after_text_seconds"].earshot
    max_segment: float = DEFAULTS["endpoint_max_segment_seconds"].earshot

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointRules:
        """The rules ``EARSHOT_ENDPOINT_*`` (or the older server's defaults) ask for."""
        return cls(
            silence_without_text=settings.endpoint_silence_without_text_seconds,
            silence_after_text=settings.endpoint_silence_after_text_seconds,
            max_segment=settings.endpoint_max_segment_seconds,
        )


@dataclass(eq=False, slots=True)
class ParaformerStream:
    """The state of one stream: sherpa's stream and what this engine last said about it."""

    sherpa: Any
    emitted: str = ""
    finished: bool = False
    done: bool = False


class ParaformerDecoder:
    """Decodes many streams with one sherpa-onnx streaming Paraformer (a ``BatchDecoder``)."""

    def __init__(
        self,
        files: tiny_paraformer.ParaformerFiles,
        *,
        num_threads: int = 1,
        endpoint: EndpointRules = EndpointRules(),
    ) -> None:
        """Load a model.

        Args:
            files: the model's encoder, decoder and tokens.
            num_threads: ONNX Runtime threads for each inference call.
            endpoint: when a segment ends.
        """
        self._recognizer = sherpa_onnx.OnlineRecognizer.from_paraformer(
            tokens=str(files.tokens),
            encoder=str(files.encoder),
            decoder=str(files.decoder),
            num_threads=num_threads,
            sample_rate=SAMPLE_RATE,
            enable_endpoint_detection=True,
            rule1_min_trailing_silence=endpoint.silence_without_text,
            rule2_min_trailing_silence=endpoint.silence_after_text,
            rule3_min_utterance_length=endpoint.max_segment,
        )

    @property
    def name(self) -> str:
        """``paraformer``."""
        return "paraformer"

    @property
    def sample_rate(self) -> int:
        """16 kHz."""
        return SAMPLE_RATE

    def open(self) -> ParaformerStream:
        """Create the state of a new stream."""
        return ParaformerStream(sherpa=self._recognizer.create_stream())

    def accept(self, stream: ParaformerStream, samples: Samples) -> None:
        """Append 16 kHz float32 audio to a stream.

        Raises:
            EngineError: the stream was already finished.
        """
        if stream.finished:
            raise EngineError("audio arrived after the stream was finished")
        # sherpa's binding takes a sequence of floats and converts an ndarray element by element,
        # with the GIL held; a list converts faster (`python -m bench.gil_handoff`: 0.6 s windows,
        # 1,120 calls/s as a list against 691 as an array; with this and reading the text only
        # after a step, the model spent 14 % less CPU a stream: bench/reports/triton_batching.md).
        stream.sherpa.accept_waveform(SAMPLE_RATE, np.asarray(samples, np.float32).tolist())

    def finish(self, stream: ParaformerStream) -> None:
        """Mark the input as ended; the next :meth:`decode` flushes it and finalises its text."""
        if not stream.finished:
            stream.sherpa.accept_waveform(SAMPLE_RATE, _TAIL_PADDING)
            stream.sherpa.input_finished()
            stream.finished = True

    def decode(self, streams: Sequence[ParaformerStream]) -> list[list[Recognition]]:
        """Decode every chunk the streams have ready, one batch per step.

        Returns:
            For each stream, in order: a final for every endpoint passed (the segment then starts
            anew), then a partial when the open segment's text changed, or, for a finished stream,
            a final with its remaining text. Empty text never yields a recognition.
        """
        said: list[list[Recognition]] = [[] for _ in streams]
        decoded: set[int] = set()
        while ready := [i for i, s in enumerate(streams) if self._is_ready(s)]:
            self._recognizer.decode_streams([streams[i].sherpa for i in ready])
            decoded.update(ready)
            for i in ready:
                said[i].extend(self._end_segment_at_endpoint(streams[i]))
        for i, (stream, recognitions) in enumerate(zip(streams, said, strict=True)):
            # Only a decode changes a stream's text: most calls decode few of their streams (sherpa
            # steps every 0.6 s of audio), and reading a result is a JSON round trip.
            if i in decoded or stream.finished:
                recognitions.extend(self._settle(stream))
        return said

    def _is_ready(self, stream: ParaformerStream) -> bool:
        return not stream.done and bool(self._recognizer.is_ready(stream.sherpa))

    def _end_segment_at_endpoint(self, stream: ParaformerStream) -> list[Recognition]:
        # Checked after every step, not once per call: a backlog may hold several segments.
        if not self._recognizer.is_endpoint(stream.sherpa):
            return []
        text = self._text(stream)
        self._recognizer.reset(stream.sherpa)
        stream.emitted = ""
        return [Recognition(text=text, is_final=True)] if text else []

    def _settle(self, stream: ParaformerStream) -> list[Recognition]:
        if stream.done:
            return []
        text = self._text(stream)
        if stream.finished:
            stream.done = True
            return [Recognition(text=text, is_final=True)] if text else []
        if not text or text == stream.emitted:
            return []
        stream.emitted = text
        return [Recognition(text=text, is_final=False)]

    def _text(self, stream: ParaformerStream) -> str:
        # Not get_result(): in sherpa-onnx 2.0.1 its ``text`` keeps one reference too many, so
        # every partial read leaked its string (about 40 KiB per 9 s session, bench/reports/
        # heap_growth.md). The JSON form is an ordinary string.
        result = json.loads(self._recognizer.get_result_as_json_string(stream.sherpa))
        return str(result["text"]).strip()


def load_paraformer(settings: Settings) -> ParaformerDecoder:
    """Load the configured model, or the tiny one when no model directory is configured.

    The tiny model is built once into ``<cache_dir>/models/tiny-paraformer`` and reused after.

    Args:
        settings: ``model_dir``, ``cache_dir``, ``inference_threads`` and the endpoint rules.

    Returns:
        The decoder.

    Raises:
        tiny_paraformer.ModelFilesMissing: ``model_dir`` lacks a file.
    """
    if settings.model_dir is not None:
        files = tiny_paraformer.ParaformerFiles.in_directory(settings.model_dir)
    else:
        files = cached_tiny_paraformer(settings.cache_dir)
    return ParaformerDecoder(
        files,
        num_threads=settings.inference_threads,
        endpoint=EndpointRules.from_settings(settings),
    )


def cached_tiny_paraformer(cache_dir: Path) -> tiny_paraformer.ParaformerFiles:
    """The tiny model under ``cache_dir``, built there first when missing.

    It is built in a temporary directory and renamed into place, so a process that is killed
    half-way or a second process building at the same time never leaves a broken model behind.
    """
    target = cache_dir / "models" / "tiny-paraformer"
    with contextlib.suppress(tiny_paraformer.ModelFilesMissing):
        return tiny_paraformer.ParaformerFiles.in_directory(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-paraformer-") as scratch:
        built = Path(scratch) / "model"
        tiny_paraformer.build_tiny_paraformer(built)
        # OSError: another process renamed its copy first, and theirs is as good.
        with contextlib.suppress(OSError):
            os.rename(built, target)
    return tiny_paraformer.ParaformerFiles.in_directory(target)
