"""Command-line entry points (typer). Each command builds the settings and hands them down."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.settings import Settings

FETCHED_MODEL = "streaming-paraformer-bilingual-zh-en"

app = typer.Typer(help="earshot: live speech-to-text for telephony and Nextcloud Talk.")
models_app = typer.Typer(help="Fetch or build recognition models.")
app.add_typer(models_app, name="models")
transcripts_app = typer.Typer(help="Read stored transcripts (telephony sessions and Talk calls).")
app.add_typer(transcripts_app, name="transcripts")
err = Console(stderr=True, soft_wrap=True)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment plus command-line overrides, or exit with why not."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err.print("[red]invalid configuration:[/red]")
        for problem in exc.errors():
            field = ".".join(str(p) for p in problem["loc"])
            err.print(f"  {field}: {problem['msg']}")
        raise typer.Exit(2) from None


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Run the telephony gateway (embedded default: in-process engine, SQLite, memory)."""
    from earshot.gateways.g711 import serving

    settings = load_settings(host=host, port=port)
    _configure_logging(settings)
    asyncio.run(serving.serve(settings))


@app.command()
def persister(
    port: Annotated[int | None, typer.Option(help="Port of /health and /metrics.")] = None,
) -> None:
    """Run the persister sidecar: drain the spool into Redis and MySQL (or SQLite and memory)."""
    from earshot.persistence import sidecar

    settings = load_settings(persister_port=port)
    _configure_logging(settings)
    asyncio.run(sidecar.run(settings))


@app.command()
def talk(
    port: Annotated[int | None, typer.Option(help="Port of the ExApp (default: APP_PORT).")] = None,
) -> None:
    """Run the Nextcloud Talk live-caption ExApp (app id live_transcription)."""
    from earshot.gateways.talk import serving as talk_serving
    from earshot.gateways.talk.configuration import TalkSettings

    settings = load_settings()
    overrides: dict[str, Any] = {"app_port": port} if port is not None else {}
    try:
        talk_settings = TalkSettings(**overrides)
    except ValidationError as exc:
        err.print(f"[red]invalid Talk configuration:[/red] {exc}")
        raise typer.Exit(2) from None
    refusal = talk_settings.refusal(
        model_configured=settings.model_dir is not None or bool(settings.triton_url)
    )
    if refusal:
        err.print(refusal, markup=False)
        raise typer.Exit(2)
    _configure_logging(settings)
    asyncio.run(talk_serving.serve(settings, talk_settings))


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="WAV file, raw file in --codec, or - for stdin.")],
    url: Annotated[str, typer.Option(help="Gateway base URL.")] = "ws://127.0.0.1:8000",
    session: Annotated[str, typer.Option(help="Session id.")] = "cli",
    codec: Annotated[Codec, typer.Option(help="Encoding to send.")] = Codec.ALAW,
    rate: Annotated[int, typer.Option(help="Sample rate to send, Hz.")] = 8000,
    speed: Annotated[
        float, typer.Option(help="Times real time; 0 sends as fast as possible.")
    ] = 1.0,
    frame_ms: Annotated[int, typer.Option(help="Milliseconds of audio per frame.")] = 20,
    token: Annotated[str | None, typer.Option(help="Access token of the session.")] = None,
) -> None:
    """Stream audio to a gateway, showing partials in place and finals as lines."""
    audio = (
        sys.stdin.buffer.read()
        if source == "-"
        else streaming.read_source(Path(source), codec, rate)
    )
    request = streaming.StreamRequest(
        url=f"{url.rstrip('/')}/ws/transcribe/{session}",
        audio=audio,
        codec=codec,
        rate=rate,
        speed=speed,
        frame_ms=frame_ms,
        token=token,
    )
    result = asyncio.run(streaming.run(request, Console(soft_wrap=True)))
    if result.errors:
        raise typer.Exit(1)


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="Times real time for the bundled sample.")] = 2.0,
) -> None:
    """Start the gateway on the embedded default, stream the bundled sample, print the transcript."""
    settings = load_settings(
        port=0, audio_codec=Codec.ALAW, audio_rate=demoing.SAMPLE_RATE, log_level="warning"
    )
    asyncio.run(demoing.run(settings, Console(soft_wrap=True), speed=speed))


@models_app.command("fetch")
def models_fetch(
    dest: Annotated[
        Path | None,
        typer.Option(help=f"Model directory to create (default: <cache>/models/{FETCHED_MODEL})."),
    ] = None,
) -> None:
    """Download the real bilingual zh-en streaming Paraformer published by sherpa-onnx."""
    from earshot.cli import fetching

    settings = load_settings()
    fetching.fetch(dest or settings.cache_dir / "models" / FETCHED_MODEL, Console(soft_wrap=True))


@models_app.command("build-tiny")
def models_build_tiny(
    dest: Annotated[Path, typer.Argument(help="Directory to write the tiny model into.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random-weight streaming Paraformer (for tests and offline demos)."""
    from earshot.engines.tiny_paraformer import build_tiny_paraformer

    files = build_tiny_paraformer(dest, seed=seed)
    Console(soft_wrap=True).print(f"tiny Paraformer written: {files.encoder.parent}")


@transcripts_app.command("show")
def transcripts_show(
    session: Annotated[str, typer.Argument(help="Session id (a Talk call: talk:<room>:<start>).")],
) -> None:
    """Print a stored transcript with its speakers and times (from EARSHOT_SEGMENTS_URL)."""
    from earshot.cli import transcripts
    from earshot.events import InvalidSessionId, parse_session_id
    from earshot.storage.ports import StorageError

    settings = load_settings()
    try:
        loaded = asyncio.run(transcripts.load(settings, parse_session_id(session)))
    except (InvalidSessionId, transcripts.UnknownTranscript, StorageError) as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    out = Console(soft_wrap=True, highlight=False)
    for text in transcripts.render(loaded):
        out.print(text, markup=False)


def main() -> None:
    """Entry point of the ``earshot`` console script."""
    app()
