"""A telephony client: streams encoded audio to a gateway and collects what it answers.

Used by ``earshot stream`` and ``earshot demo``, by the protocol tests and by the benchmarks. It
speaks PROTOCOLS.md §1 exactly like the older server's clients do.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from earshot.audio import codecs
from earshot.audio.framing import chunked, frame_bytes
from earshot.gateways.g711 import messages


@dataclass(slots=True)
class StreamResult:
    """Everything the server said during one stream, and how it ended."""

    partials: list[messages.PartialMessage] = field(default_factory=list)
    finals: list[messages.FinalMessage] = field(default_factory=list)
    errors: list[messages.ErrorMessage] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def transcript(self) -> str:
        """The finals joined with spaces."""
        return " ".join(f["text"] for f in self.finals)


OnMessage = Callable[[messages.ServerMessage], None]

#: A lingering client leaves once the server's last answer is a final and it has said nothing more
#: for this long: a server behind the client (audio sent faster than real time) says a segment's
#: final before the next segment's first partial, so a final alone does not mean it is done. A
#: server that takes longer than this to say the next partial still loses the client early (its
#: finals are stored all the same); every lingering stream ends this much later.
SETTLE_SECONDS = 1.5

# How compressed formats begin: such a file is never raw telephony audio.
_CONTAINERS = {b"ID3": "MP3", b"\xff\xfb": "MP3", b"fLaC": "FLAC", b"OggS": "Ogg"}


class UnsupportedAudio(ValueError):
    """A file that is neither a 16-bit PCM WAV nor raw audio in the stream's codec."""


def load_audio(path: Path, *, codec: codecs.Codec, rate: int) -> bytes:
    """Read a WAV file (converted to ``codec`` at ``rate``) or a raw file already in ``codec``.

    A file is a WAV when it starts like one (whatever its name); other files are sent as they are.

    Raises:
        UnsupportedAudio: a ``.wav`` that is not a WAV, a WAV that is not 16-bit PCM, or a
            compressed file (MP3, FLAC, Ogg).
    """
    head = path.read_bytes()[:4]
    if head != b"RIFF":
        if path.suffix.lower() == ".wav":
            raise UnsupportedAudio(f"{path} is named .wav but is not a WAV file")
        for magic, kind in _CONTAINERS.items():
            if head.startswith(magic):
                raise UnsupportedAudio(f"{path} is {kind}, not a WAV or raw audio")
        return path.read_bytes()
    try:
        return _read_wav(path, codec=codec, rate=rate)
    except (wave.Error, EOFError) as exc:
        raise UnsupportedAudio(f"{path} is not a WAV file this client reads: {exc}") from None


def _read_wav(path: Path, *, codec: codecs.Codec, rate: int) -> bytes:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise UnsupportedAudio(
                f"{path} has {8 * wav.getsampwidth()}-bit samples; only 16-bit PCM WAV is read"
            )
        channels, source_rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = pcm.reshape(-1, channels).mean(axis=1).astype(np.float32) / np.float32(32768.0)
    if source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate).astype(np.float32)
    return encode(samples, codec)


def encode(samples: codecs.Samples, codec: codecs.Codec) -> bytes:
    """Encode float32 samples for the wire."""
    if codec is codecs.Codec.ALAW:
        return codecs.encode_alaw(samples)
    if codec is codecs.Codec.ULAW:
        return codecs.encode_ulaw(samples)
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def frames_of(audio: bytes, *, codec: codecs.Codec, rate: int, frame_ms: int = 20) -> list[bytes]:
    """Cut encoded audio into frames of ``frame_ms`` milliseconds."""
    return list(chunked(audio, frame_bytes(codec, rate, frame_ms)))


async def stream(
    url: str,
    frames: Iterable[bytes],
    *,
    frame_seconds: float,
    speed: float = 1.0,
    token: str | None = None,
    on_message: OnMessage | None = None,
    on_frame_sent: Callable[[int], None] | None = None,
    linger: float = 0.0,
) -> StreamResult:
    """Send ``frames`` paced at ``speed`` times real time (0: as fast as possible), then close.

    The protocol has no end-of-stream message: the server finalises a pending partial when the
    client leaves, but can no longer send that final. With ``linger`` the client waits up to that
    many seconds, once everything is sent, for the server's last answer to be a final followed by
    :data:`SETTLE_SECONDS` of quiet (also when nothing has arrived yet) before it closes.

    Returns:
        What the server answered before the connection closed.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    result = StreamResult()
    heard = _Heard()
    async with connect(url, additional_headers=headers, max_size=None) as ws:
        receiver = asyncio.create_task(_receive(ws, result, heard, on_message))
        try:
            await _send_paced(
                ws, frames, frame_seconds / speed if speed > 0 else 0.0, on_frame_sent
            )
            if linger > 0:
                await _linger(receiver, heard, linger)
            await ws.close()
        except ConnectionClosed:
            pass
        except BaseException:
            # Interrupted (Ctrl-C cancels the task) or failed: stop listening at once.
            receiver.cancel()
            await asyncio.wait([receiver])
            raise
        await receiver
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


@dataclass(slots=True)
class _Heard:
    """Whether the server's last answer is a final, and when it last said anything."""

    # Unset until a final arrives with no partial after it: a client that finished sending before
    # the server's first answer must still wait for it (the server may be behind).
    final_last: asyncio.Event = field(default_factory=asyncio.Event)
    last_at: float = field(default_factory=time.monotonic)

    def said(self, message: messages.ServerMessage) -> None:
        self.last_at = time.monotonic()
        if message["type"] == "partial":
            self.final_last.clear()
        elif message["type"] == "final":
            self.final_last.set()

    async def settle(self) -> None:
        """Return once the last answer is a final and nothing came for :data:`SETTLE_SECONDS`."""
        while True:
            await self.final_last.wait()
            quiet_left = self.last_at + SETTLE_SECONDS - time.monotonic()
            if quiet_left <= 0:
                return
            await asyncio.sleep(quiet_left)


async def _linger(receiver: asyncio.Task[None], heard: _Heard, seconds: float) -> None:
    """Wait up to ``seconds`` for the server to settle, or to close the connection."""
    settling = asyncio.create_task(heard.settle())
    try:
        await asyncio.wait(
            {receiver, settling}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        settling.cancel()
        await asyncio.wait([settling])


async def _send_paced(
    ws: ClientConnection,
    frames: Iterable[bytes],
    interval: float,
    on_frame_sent: Callable[[int], None] | None,
) -> None:
    start = time.monotonic()
    for index, frame in enumerate(frames):
        if interval:
            delay = start + index * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(frame)
        if on_frame_sent is not None:
            on_frame_sent(index + 1)


async def _receive(
    ws: ClientConnection,
    result: StreamResult,
    heard: _Heard,
    on_message: OnMessage | None,
) -> None:
    try:
        async for raw in ws:
            message = cast(messages.ServerMessage, json.loads(raw))
            heard.said(message)
            if message["type"] == "partial":
                result.partials.append(message)
            elif message["type"] == "final":
                result.finals.append(message)
            else:
                result.errors.append(message)
            if on_message is not None:
                on_message(message)
    except ConnectionClosed:
        pass
