"""``earshot stream``: send audio to a gateway with a progress bar; partials in place, finals as lines."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from earshot.audio.codecs import Codec
from earshot.audio.framing import duration_seconds, frame_bytes
from earshot.cli.errors import USAGE, CliError
from earshot.gateways.g711 import client, messages

# A-law and mu-law code words for a zero sample, and PCM16 zero: the silence sent after the audio
# so that the recogniser's endpoint rule ends the last segment while the client still listens.
_SILENCE = {Codec.ALAW: b"\xd5", Codec.ULAW: b"\xff", Codec.PCM16LE: b"\x00\x00"}
TRAILING_SILENCE_MS = 2000
LINGER_SECONDS = 5.0
DEFAULT_SESSION = "cli"
_PATH = "/ws/transcribe/"
_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


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


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a stream goes: the WebSocket URL of one session, and the token to send."""

    url: str
    session: str
    token: str | None


def resolve_endpoint(url: str, *, session: str | None, token: str | None) -> Endpoint:
    """Read ``--url``: a gateway's base URL, or a session's whole ENDPOINT (with ``?token=``).

    Raises:
        CliError: (usage) not a ws/wss/http(s) URL, or it disagrees with ``--session``/``--token``.
    """
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise CliError(
            f"--url {url!r} is not a WebSocket URL",
            "give ws://host:port (wss:// behind TLS) or a TranscriptionSession's ENDPOINT",
            exit_code=USAGE,
        )
    base, found, in_url = parts.path.partition(_PATH)
    in_url = in_url.strip("/")
    if found and session is not None and session != in_url:
        raise CliError(
            f"--session {session!r} disagrees with the session {in_url!r} in --url",
            "give one of them",
            exit_code=USAGE,
        )
    url_token = parse_qs(parts.query).get("token", [None])[0]
    if url_token is not None and token is not None and url_token != token:
        raise CliError(
            "--token disagrees with the token in --url", "give one of them", exit_code=USAGE
        )
    chosen = (in_url if found else session) or DEFAULT_SESSION
    path = f"{base.rstrip('/')}{_PATH}{chosen}"
    # The token travels as a Bearer header, never in a URL that may be logged.
    return Endpoint(urlunsplit((scheme, parts.netloc, path, "", "")), chosen, token or url_token)


def read_source(path: Path, codec: Codec, rate: int) -> bytes:
    """Read a WAV (converted) or raw (as is) audio file.

    Raises:
        CliError: (usage) the file is missing or not audio this client reads.
    """
    if not path.is_file():
        raise CliError(f"no such audio file: {path}", "check the path", exit_code=USAGE)
    try:
        return client.load_audio(path, codec=codec, rate=rate)
    except client.UnsupportedAudio as exc:
        raise CliError(
            str(exc),
            "convert it, e.g. `sox in.mp3 -b 16 out.wav`, or send raw audio in --codec",
            exit_code=USAGE,
        ) from None


def with_trailing_silence(audio: bytes, codec: Codec, rate: int) -> bytes:
    """Append silence so the server's endpoint detection closes the last segment."""
    samples = frame_bytes(codec, rate, TRAILING_SILENCE_MS) // codec.bytes_per_sample
    return audio + _SILENCE[codec] * samples


async def run(request: StreamRequest, console: Console) -> client.StreamResult:
    """Stream the request's audio and render the server's answers on ``console``.

    Raises:
        CliError: the gateway cannot be reached or refused the WebSocket.
    """
    try:
        return await _run(request, console)
    except InvalidURI as exc:
        raise CliError(str(exc), "check --url", exit_code=USAGE) from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise CliError(
            f"{request.url} answered HTTP {status} instead of a WebSocket",
            _status_hint(status),
        ) from None
    except InvalidHandshake as exc:
        raise CliError(f"{request.url}: WebSocket handshake failed: {exc}", "check --url") from None
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            reason = "connection refused"
        raise CliError(
            f"cannot connect to {request.url}: {reason}",
            "is `earshot serve` running there? check --url",
        ) from None


def summary(result: client.StreamResult, request: StreamRequest, elapsed: float) -> str:
    """The end-of-stream line: finals, seconds, session and where its text is stored."""
    seconds = duration_seconds(len(request.audio), request.codec, request.rate)
    session = request.url.rsplit("/", 1)[-1]
    finals = len(result.finals)
    return (
        f"{finals} final{'' if finals == 1 else 's'}, {seconds:.1f} s of audio in {elapsed:.1f} s; "
        f"session {session} is stored by the gateway at {request.url}"
    )


def _status_hint(status: int) -> str:
    if status in (401, 403, 404):
        return (
            "the path must be /ws/transcribe/<session>: give the gateway's base URL or the ENDPOINT"
        )
    return "is this an earshot gateway? check --url"


async def _run(request: StreamRequest, console: Console) -> client.StreamResult:
    audio = with_trailing_silence(request.audio, request.codec, request.rate)
    frames = client.frames_of(
        audio, codec=request.codec, rate=request.rate, frame_ms=request.frame_ms
    )
    started = time.monotonic()
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
    console.print(summary(result, request, time.monotonic() - started), highlight=False)
    return result
