"""Encoded audio held until the recogniser can use it, then decoded and resampled in one go.

A recogniser that decodes in steps (sherpa's Paraformer: 0.6 s windows) does nothing with a 20 ms
frame that does not complete its next step. Decoding and resampling each frame on arrival costs two
native calls per frame, and each releases the GIL: on a gateway whose inference thread wants the
GIL, every release can hand it over and leave the event loop waiting for its return
(bench/reports/gateway_streams_held.md measured the effect). :class:`HeldAudio` keeps the encoded
frames instead, and decodes and resamples them only once they could complete the step.

The decision is made on lengths: the held chunks' samples at the target rate plus what the
resampler was given and has not returned yet. The resampler holds part of that back: soxr emits
whole blocks, and how much it returns depends only on how much it was given in all, not on how it
was cut (from soxr 1.0, the floor in pyproject.toml; 0.3.7 differs). So released audio can fall
short of the step (the recogniser then holds it itself, and wants the rest), and a call that
returned nothing says that the resampler returns nothing while it would hold no more than it held
then. Chunks that could not bring a block out are held; the others are released at once, as without
holding. The recogniser gets the same audio at the same chunks as when every chunk is decoded and
resampled on arrival (``tests/unit/test_held_audio.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from earshot.audio import codecs
from earshot.audio.resampling import Samples, StreamResampler

_EMPTY: Samples = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Released:
    """Audio released to the recogniser: earlier held chunks first, then the newest one."""

    samples: Samples
    #: How many of :attr:`samples` the resampler returned before it was given the newest chunk:
    #: what a call that refuses the newest chunk gives back (:meth:`HeldAudio.restore`). A block the
    #: newest chunk completed counts as the newest chunk's, as it did when every chunk was resampled
    #: on arrival.
    earlier: int


class HeldAudio:
    """The encoded chunks of one stream that the recogniser cannot use yet."""

    def __init__(self, codec: codecs.Codec, resampler: StreamResampler) -> None:
        """Hold ``codec`` chunks, released through ``resampler`` (its rates give the estimate)."""
        self._codec = codec
        self._resampler = resampler
        self._chunks: list[bytes] = []
        self._bytes = 0
        # Samples given to the resampler (at its source rate) and samples it returned.
        self._given = 0
        self._returned = 0
        # The most audio (at the target rate) a call that returned nothing left in the resampler.
        self._dry = 0
        self._flushed = False
        # Decoded audio of earlier chunks that a refused call gave back, released before the rest.
        self._restored: Samples = _EMPTY

    @property
    def holding(self) -> bool:
        """Whether audio is held (encoded or given back)."""
        return bool(self._chunks) or bool(self._restored.size)

    def add(self, chunk: bytes, wanted: int) -> Released | None:
        """Take a chunk; release everything held once it could make up ``wanted`` samples (at the
        resampler's target rate; 0: release at once).

        Raises:
            codecs.InvalidAudio: the chunk cannot be decoded; it is not held, nothing else is lost.
            RuntimeError: the stream was flushed.
        """
        self._check_open()
        codecs.check(chunk, self._codec)
        if wanted > 0 and self._could_make(self._bytes + len(chunk)) < wanted:
            self._chunks.append(chunk)
            self._bytes += len(chunk)
            return None
        earlier = self._release_held()
        newest = self._resample(chunk)
        if not earlier.size:
            return Released(newest, 0)
        return Released(np.concatenate((earlier, newest)), earlier.size)

    def restore(self, samples: Samples) -> None:
        """Hold released audio again (a call refused it), to be released before anything else.

        Raises:
            RuntimeError: the stream was flushed.
        """
        self._check_open()
        if samples.size:
            self._restored = np.concatenate((samples, self._restored))

    def flush(self) -> Samples:
        """Everything held, decoded and resampled, and the resampler's own tail: the stream ends.

        A second flush returns nothing (as the resampler's own).
        """
        if self._flushed:
            return _EMPTY
        held = self._release_held()
        self._flushed = True
        tail = self._resampler.flush()
        if not held.size:
            return tail
        return np.concatenate((held, tail)) if tail.size else held

    def _release_held(self) -> Samples:
        restored, self._restored = self._restored, _EMPTY
        if not self._chunks:
            return restored
        chunks, self._chunks, self._bytes = self._chunks, [], 0
        decoded = self._resample(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        return np.concatenate((restored, decoded)) if restored.size else decoded

    def _check_open(self) -> None:
        if self._flushed:
            raise RuntimeError("the held audio was flushed: the stream has ended")

    def _resample(self, chunk: bytes) -> Samples:
        samples = codecs.decode(chunk, self._codec)
        out = self._resampler.process(samples)
        self._given += samples.size
        self._returned += out.size
        if not out.size:
            self._dry = max(self._dry, self._in_resampler(self._given))
        return out

    def _in_resampler(self, given: int) -> int:
        """What the resampler would hold, at the target rate, once given ``given`` samples in all
        (before it returns any of it)."""
        resampler = self._resampler
        return given * resampler.target_rate // resampler.source_rate - self._returned

    def _could_make(self, held_bytes: int) -> int:
        """The most samples releasing ``held_bytes`` could return now: none while the resampler
        would hold no more than when a call last returned nothing."""
        pending = self._in_resampler(self._given + held_bytes // self._codec.bytes_per_sample)
        return (pending if pending > self._dry else 0) + self._restored.size
