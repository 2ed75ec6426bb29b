"""Framing helpers: how many bytes a duration of encoded audio takes, and cutting a byte stream."""

from __future__ import annotations

from collections.abc import Iterator

from earshot.audio.codecs import Codec


def frame_bytes(codec: Codec, rate: int, milliseconds: int) -> int:
    """Bytes of ``milliseconds`` of audio at ``rate`` Hz in ``codec`` (20 ms A-law at 8 kHz: 160)."""
    return rate * milliseconds // 1000 * codec.bytes_per_sample


def duration_seconds(n_bytes: int, codec: Codec, rate: int) -> float:
    """How long ``n_bytes`` of encoded audio plays."""
    return n_bytes / codec.bytes_per_sample / rate


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    """Cut ``data`` into chunks of ``size`` bytes (the last one may be shorter)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    for start in range(0, len(data), size):
        yield data[start : start + size]
