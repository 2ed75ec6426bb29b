"""``earshot stream``: send audio to a gateway with a progress bar; partials in place, finals as lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from earshot.audio.codecs import Codec
from earshot.audio.framing import frame_bytes
from earshot.gateways.g711 import client, messages

# A-law and mu-law code words for a zero sample, and PCM16 zero: the silence sent after the audio
# so that the recogniser's endpoint rule ends the last segment while the client still listens.
_SILENCE = {Codec.ALAW: b"\xd5", Codec.ULAW: b"\xff", Codec.PCM16LE: b"\x00\x00"}
TRAILING_SILENCE_MS = 2000
LINGER_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What to stream where, and how."""

    url: str
    audio: bytes
    codec: Codec
    rate: int
    speed: float = 1.0
    frame_ms: int = 20
    token: str | None = None


def read_source(path: Path, codec: Codec, rate: int) -> bytes:
    """Read a WAV (converted) or raw (as is) audio file, with a readable error when it is missing."""
    if not path.is_file():
        raise SystemExit(f"no such audio file: {path}")
    return client.load_audio(path, codec=codec, rate=rate)


def with_trailing_silence(audio: bytes, codec: Codec, rate: int) -> bytes:
    """Append silence so the server's endpoint detection closes the last segment."""
    samples = frame_bytes(codec, rate, TRAILING_SILENCE_MS) // codec.bytes_per_sample
    return audio + _SILENCE[codec] * samples


async def run(request: StreamRequest, console: Console) -> client.StreamResult:
    """Stream the request's audio and render the server's answers on ``console``."""
    audio = with_trailing_silence(request.audio, request.codec, request.rate)
    frames = client.frames_of(
        audio, codec=request.codec, rate=request.rate, frame_ms=request.frame_ms
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[partial]}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("streaming", total=len(frames), partial="")

        def show(message: messages.ServerMessage) -> None:
            if message["type"] == "partial":
                progress.update(task, partial=f"[dim]{message['seq']}: {message['text'][-60:]}")
            elif message["type"] == "final":
                progress.update(task, partial="")
                progress.console.print(f"[green]{message['seq']:>4}[/green] {message['text']}")
            else:
                progress.console.print(f"[red]error {message['code']}:[/red] {message['message']}")

        result = await client.stream(
            request.url,
            frames,
            frame_seconds=request.frame_ms / 1000,
            speed=request.speed,
            token=request.token,
            on_message=show,
            linger=LINGER_SECONDS,
            on_frame_sent=lambda sent: progress.update(task, completed=sent),
        )
    if result.close_code not in (None, 1000):
        console.print(f"[yellow]closed with {result.close_code} {result.close_reason}[/yellow]")
    return result
