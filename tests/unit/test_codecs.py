"""G.711 and PCM16 decoding."""

from __future__ import annotations

import numpy as np
import pytest

from earshot.audio import codecs
from earshot.audio.codecs import Codec, InvalidAudio


def test_alaw_decodes_like_the_old_audioop_table() -> None:
    # audioop.alaw2lin(bytes([0, 0x55, 0xD5, 0x80]), 2) gave -5504, -8, 8, 5504 (ITU-T G.711).
    decoded = codecs.decode(bytes([0x00, 0x55, 0xD5, 0x80]), Codec.ALAW) * 32768
    assert decoded.tolist() == [-5504.0, -8.0, 8.0, 5504.0]


def test_ulaw_decodes_like_the_old_audioop_table() -> None:
    # audioop.ulaw2lin(bytes([0, 0x7F, 0xFF, 0x80]), 2) gave -32124, 0, 0, 32124.
    decoded = codecs.decode(bytes([0x00, 0x7F, 0xFF, 0x80]), Codec.ULAW) * 32768
    assert decoded.tolist() == [-32124.0, 0.0, 0.0, 32124.0]


@pytest.mark.parametrize("codec", [Codec.ALAW, Codec.ULAW])
def test_g711_round_trip_stays_within_quantisation_error(codec: Codec) -> None:
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    encoded = codecs.encode_alaw(tone) if codec is Codec.ALAW else codecs.encode_ulaw(tone)
    assert len(encoded) == tone.size
    assert np.abs(codecs.decode(encoded, codec) - tone).max() < 0.02


def test_pcm16_decodes_little_endian_samples_to_float() -> None:
    chunk = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    assert codecs.decode(chunk, Codec.PCM16LE).tolist() == [0.0, 0.5, -1.0, 32767 / 32768]


def test_odd_length_pcm16_frame_is_refused_with_its_size() -> None:
    with pytest.raises(InvalidAudio, match="pcm16le frame has 3 bytes"):
        codecs.decode(b"\x00\x01\x02", Codec.PCM16LE)


@pytest.mark.parametrize("codec", list(Codec))
def test_empty_frame_is_refused(codec: Codec) -> None:
    with pytest.raises(InvalidAudio, match="empty audio frame"):
        codecs.decode(b"", codec)


def test_decoded_samples_are_float32() -> None:
    assert codecs.decode(b"\xd5" * 160, Codec.ALAW).dtype == np.float32
