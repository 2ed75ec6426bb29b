"""Kyutai streaming STT (moshi's Mimi + LM, 24 kHz, 80 ms steps) as a batched decoder.

May do: run moshi on a torch device, keep per-stream audio and text state. Must not: use asyncio,
start threads, download models, read the environment.

Batching: the Mimi and LM streaming states are created once for a fixed number of *slots*
(``max_streams``): one torch batch row per stream. A stream takes a free slot when opened and gives
it back once finished; the slot's rows are reset (moshi's per-row ``reset_streaming(mask)``) before
its first step. Each step runs the whole slot batch with an *execution mask*: rows of streams with
no 80 ms frame ready (or no stream) compute but keep their state, so streams join, pause and leave
at any step without disturbing the others. A fixed batch shape is also what CUDA graphs need;
the price is that an idle slot costs as much compute as a busy one, so size ``max_streams`` to the
device (``bench/kyutai_gpu.py``).

Segments: a partial whenever the segment's text grows; a final when the pause probability of the
semantic VAD head stays above ``pause_threshold`` for ``pause_seconds`` (PROTOCOLS.md section 4),
and at stream end after the model's text delay has been flushed with silence.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from moshi.models.lm import LMGen
from moshi.utils.compile import no_compile, no_cuda_graph

from earshot.engines import kyutai_checkpoints, tiny_kyutai
from earshot.engines.kyutai_checkpoints import KyutaiModel
from earshot.engines.recognizers import EngineError, EngineOverloaded, Samples
from earshot.events import Recognition

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE

# Upstream reads the end-of-turn ("pause") probability from the third extra head, column 0.
_PAUSE_HEAD = 2
# Silence after the text delay before a stream's last words are out (the upstream scripts flush
# with audio_delay + 1 s; half a second has been enough for the text to settle).
_FLUSH_MARGIN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class KyutaiOptions:
    """How the decoder batches and segments.

    Attributes:
        max_streams: slots in the batch; opening one more stream raises ``EngineOverloaded``.
        pause_threshold: a step is a pause when the VAD pause probability is above this.
        pause_seconds: pause steps in a row that end a segment.
        torch_compile: let moshi ``torch.compile`` its hot functions (slow first steps; GPU only).
        cuda_graphs: let moshi capture its steps as CUDA graphs (GPU only).
    """

    max_streams: int = 16
    pause_threshold: float = 0.5
    pause_seconds: float = 2.0
    torch_compile: bool = False
    cuda_graphs: bool = True


class KyutaiStream:
    """The state of one audio stream: its slot, the audio not yet stepped, its segment."""

    def __init__(self, slot: int, *, prefix_samples: int) -> None:
        self.slot = slot
        self.fresh = True
        self.finished = False
        self.done = False
        self.pieces: list[str] = []
        self.reported = ""
        self.pause_steps = 0
        self._audio = np.zeros(prefix_samples, dtype=np.float32)

    @property
    def text(self) -> str:
        """The segment's text so far (word pieces joined, sentencepiece spaces made real)."""
        return "".join(self.pieces).replace("\u2581", " ").strip()

    def append(self, samples: Samples) -> None:
        """Queue audio for the next steps."""
        self._audio = np.concatenate([self._audio, samples.astype(np.float32, copy=False)])

    def pad_to_frames(self, extra_frames: int) -> None:
        """Complete the last frame with silence and add ``extra_frames`` frames of silence."""
        short = -len(self._audio) % FRAME_SAMPLES
        self.append(np.zeros(short + extra_frames * FRAME_SAMPLES, dtype=np.float32))

    def frames(self) -> int:
        """How many full 80 ms frames wait for steps."""
        return len(self._audio) // FRAME_SAMPLES

    def has_frame(self) -> bool:
        """Whether 80 ms of audio wait for a step."""
        return len(self._audio) >= FRAME_SAMPLES

    def take_frame(self) -> Samples:
        """Remove and return the next 80 ms of audio."""
        frame, self._audio = self._audio[:FRAME_SAMPLES], self._audio[FRAME_SAMPLES:]
        return frame


class KyutaiDecoder:
    """Kyutai STT over a fixed pool of batch slots; implements ``BatchDecoder[KyutaiStream]``.

    ``open``, ``accept`` and ``finish`` are cheap and may run on any thread; ``decode`` runs the
    model and is serialised (one slot batch, one streaming state), so more decode threads than one
    add nothing but waiting.
    """

    def __init__(self, model: KyutaiModel, options: KyutaiOptions | None = None) -> None:
        self._options = options or KyutaiOptions()
        self._model = model
        self._device = next(model.lm.parameters()).device
        self._lm_gen = LMGen(model.lm, use_sampling=False, support_out_of_sync=True)
        self._streaming = ExitStack()
        size = self._options.max_streams
        self._streaming.enter_context(model.mimi.streaming(size))
        self._streaming.enter_context(self._lm_gen.streaming(size))
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(size):
            self._free.put(slot)
        self._releases: dict[int, weakref.finalize[[int], KyutaiStream]] = {}
        self._lock = threading.Lock()
        self._pause_steps = max(1, round(self._options.pause_seconds / FRAME_SECONDS))
        delay = model.audio_delay_seconds + _FLUSH_MARGIN_SECONDS
        self._flush_frames = math.ceil(delay / FRAME_SECONDS)
        self._prefix_samples = round(model.silence_prefix_seconds * SAMPLE_RATE)
        self._skipped = {model.lm.text_padding_token_id, model.lm.end_of_text_padding_id}

    @property
    def name(self) -> str:
        """The engine name."""
        return "kyutai"

    @property
    def sample_rate(self) -> int:
        """Mimi's rate: 24 kHz."""
        return SAMPLE_RATE

    def open(self) -> KyutaiStream:
        """Take a free slot for a new stream.

        Raises:
            EngineOverloaded: every slot is taken.
        """
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            raise EngineOverloaded(
                f"all {self._options.max_streams} Kyutai batch slots are in use"
            ) from None
        stream = KyutaiStream(slot, prefix_samples=self._prefix_samples)
        # SimpleQueue.put is reentrant, so a stream dropped without being finished and decoded
        # gives its slot back from the garbage collector.
        self._releases[slot] = weakref.finalize(stream, self._free.put, slot)
        return stream

    def accept(self, stream: KyutaiStream, samples: Samples) -> None:
        """Queue 24 kHz audio of a stream.

        Raises:
            EngineError: the stream was finished.
        """
        if stream.finished:
            raise EngineError("audio after the end of the stream")
        stream.append(samples)

    def finish(self, stream: KyutaiStream) -> None:
        """End a stream's input: its next decode flushes the text delay and finalises."""
        if not stream.finished:
            stream.finished = True
            stream.pad_to_frames(self._flush_frames)

    @property
    def step_seconds(self) -> float:
        """One step consumes 80 ms of every stream's audio."""
        return FRAME_SECONDS

    def decode(self, streams: Sequence[KyutaiStream]) -> list[list[Recognition]]:
        """Step the model until no given stream has a full frame left; see ``BatchDecoder``."""
        results = self._stepped(streams, until_caught_up=True)
        for stream, out in zip(streams, results, strict=True):
            if not stream.done:
                out.extend(self.report(stream))
        return results

    def behind(self, stream: KyutaiStream) -> bool:
        """Whether a frame, or the flush of a finished stream, waits for a step."""
        return not stream.done and (stream.has_frame() or stream.finished)

    def frames(self, stream: KyutaiStream) -> int:
        """The full 80 ms frames waiting (the silence prefix and a finished stream's flush too)."""
        return 0 if stream.done else stream.frames()

    def step(self, streams: Sequence[KyutaiStream]) -> list[list[Recognition]]:
        """One model step for the given streams that are behind; see ``SteppedDecoder``."""
        return self._stepped(streams, until_caught_up=False)

    def report(self, stream: KyutaiStream) -> list[Recognition]:
        """The stream's partial when its text changed since it was last reported."""
        out: list[Recognition] = []
        self._report_partial(stream, out)
        return out

    def _stepped(
        self, streams: Sequence[KyutaiStream], *, until_caught_up: bool
    ) -> list[list[Recognition]]:
        results: list[list[Recognition]] = [[] for _ in streams]
        live = [
            (stream, out) for stream, out in zip(streams, results, strict=True) if not stream.done
        ]
        with self._lock, ExitStack() as switches:
            if not self._options.torch_compile:
                switches.enter_context(no_compile())
            if not self._options.cuda_graphs:
                switches.enter_context(no_cuda_graph())
            self._reset_fresh([stream for stream, _ in live])
            while ready := [(s, out) for s, out in live if s.has_frame()]:
                self._step(ready)
                if not until_caught_up:
                    break
        for stream, out in live:
            if stream.finished and not stream.has_frame():
                self._close(stream, out)
        return results

    def close(self) -> None:
        """Leave moshi's streaming mode, so that the model can serve another decoder."""
        with self._lock:
            self._streaming.close()

    def _reset_fresh(self, streams: list[KyutaiStream]) -> None:
        fresh = [stream.slot for stream in streams if stream.fresh]
        if not fresh:
            return
        mask = torch.zeros(self._options.max_streams, dtype=torch.bool, device=self._device)
        mask[fresh] = True
        self._model.mimi.reset_streaming(mask)
        self._lm_gen.reset_streaming(mask)
        for stream in streams:
            stream.fresh = False

    @torch.no_grad()
    def _step(self, ready: list[tuple[KyutaiStream, list[Recognition]]]) -> None:
        size = self._options.max_streams
        slots = [stream.slot for stream, _ in ready]
        pcm = np.zeros((size, 1, FRAME_SAMPLES), dtype=np.float32)
        pcm[slots, 0] = np.stack([stream.take_frame() for stream, _ in ready])
        mask = torch.zeros(size, dtype=torch.bool)
        mask[slots] = True
        mask = mask.to(self._device)
        self._model.mimi.set_exec_mask(mask)
        self._lm_gen.set_exec_mask(mask)
        codes = self._model.mimi.encode(torch.from_numpy(pcm).to(self._device))
        stepped = self._lm_gen.step_with_extra_heads(codes)
        assert stepped is not None  # support_out_of_sync: every step returns tokens
        tokens, heads = stepped
        text = tokens[:, 0, 0].tolist()
        pause = heads[_PAUSE_HEAD][:, 0, 0].float().tolist() if len(heads) > _PAUSE_HEAD else None
        for stream, out in ready:
            self._advance(
                stream, text[stream.slot], None if pause is None else pause[stream.slot], out
            )

    def _advance(
        self, stream: KyutaiStream, token: int, pause: float | None, out: list[Recognition]
    ) -> None:
        tokenizer = self._model.tokenizer
        if (
            token >= 0
            and token not in self._skipped
            and not (tokenizer.is_control(token) or tokenizer.is_unknown(token))
        ):
            stream.pieces.append(tokenizer.id_to_piece(token))
        paused = pause is not None and pause > self._options.pause_threshold
        stream.pause_steps = stream.pause_steps + 1 if paused else 0
        if stream.pause_steps >= self._pause_steps and stream.text:
            self._end_segment(stream, out)

    def _report_partial(self, stream: KyutaiStream, out: list[Recognition]) -> None:
        text = stream.text
        if text != stream.reported:
            stream.reported = text
            out.append(Recognition(text=text, is_final=False))

    def _end_segment(self, stream: KyutaiStream, out: list[Recognition]) -> None:
        if stream.text:
            out.append(Recognition(text=stream.text, is_final=True))
        stream.pieces.clear()
        stream.reported = ""
        stream.pause_steps = 0

    def _close(self, stream: KyutaiStream, out: list[Recognition]) -> None:
        self._end_segment(stream, out)
        stream.done = True
        self._releases.pop(stream.slot)()


def load_kyutai(
    *,
    model_dir: Path | None,
    cache_dir: Path,
    device: str = "cpu",
    options: KyutaiOptions | None = None,
) -> KyutaiDecoder:
    """Load a Kyutai STT decoder from a local checkpoint directory.

    Args:
        model_dir: a directory in the published ``kyutai/stt-1b-en_fr`` layout; ``None``: the tiny
            random-weight model, built once under ``cache_dir``.
        cache_dir: where the tiny model is kept.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        options: batching and segmentation options.

    Raises:
        kyutai_checkpoints.CheckpointError: the directory is not a usable checkpoint.
    """
    directory = model_dir or tiny_kyutai.ensure_tiny_checkpoint(cache_dir)
    model = kyutai_checkpoints.load_checkpoint(directory, device=device)
    return KyutaiDecoder(model, options)
