"""Input codecs of the telephony path: G.711 A-law and mu-law, and PCM16 little-endian.

Decoding uses lookup tables built once from the `g711` package (bit-exact with the old `audioop`),
so a chunk decodes with one numpy indexing operation. Output is float32 = int16 / 32768.
"""

from __future__ import annotations

import enum

import g711
import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


class Codec(enum.StrEnum):
    """The audio encodings a telephony client may send."""

    ALAW = "alaw"
    ULAW = "ulaw"
    PCM16LE = "pcm16le"

    @property
    def bytes_per_sample(self) -> int:
        """Bytes one sample takes on the wire."""
        return 2 if self is Codec.PCM16LE else 1


class InvalidAudio(ValueError):
    """A chunk that cannot be decoded with the stream's codec."""


def _table(decode: object) -> Samples:
    codes = np.arange(256, dtype=np.uint8).tobytes()
    table = np.asarray(decode(codes), dtype=np.float32)  # type: ignore[operator]
    assert table.shape == (256,)
    return table


_ALAW_TABLE = _table(g711.decode_alaw)
_ULAW_TABLE = _table(g711.decode_ulaw)


def check(chunk: bytes, codec: Codec) -> None:
    """Raise what :func:`decode` would for ``chunk``, without decoding it.

    Raises:
        InvalidAudio: the chunk is empty, or a PCM16 chunk has an odd number of bytes.
    """
    if not chunk:
        raise InvalidAudio("empty audio frame")
    if codec is Codec.PCM16LE and len(chunk) % 2:
        raise InvalidAudio(
            f"pcm16le frame has {len(chunk)} bytes; a whole number of 2-byte samples is required"
        )


def decode(chunk: bytes, codec: Codec) -> Samples:
    """Decode one chunk to float32 mono samples in [-1, 1).

    Raises:
        InvalidAudio: the chunk is empty, or a PCM16 chunk has an odd number of bytes.
    """
    check(chunk, codec)
    if codec is Codec.PCM16LE:
        return np.frombuffer(chunk, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    table = _ALAW_TABLE if codec is Codec.ALAW else _ULAW_TABLE
    return table[np.frombuffer(chunk, dtype=np.uint8)]


def encode_alaw(samples: Samples) -> bytes:
    """Encode float32 samples as A-law (used for the bundled sample and by test clients)."""
    return bytes(g711.encode_alaw(np.clip(samples, -1.0, 32767 / 32768).astype(np.float32)))


def encode_ulaw(samples: Samples) -> bytes:
    """Encode float32 samples as mu-law."""
    return bytes(g711.encode_ulaw(np.clip(samples, -1.0, 32767 / 32768).astype(np.float32)))
