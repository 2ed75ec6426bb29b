"""``earshot demo``: the whole telephony path in one process, on the embedded default.

Fetches the published streaming Paraformer into the cache when it can (once; offline it says so
in one line and the tiny random-weight model runs instead), starts the gateway on a free port,
streams the bundled A-law sample through a real WebSocket, then prints the transcript as stored
and where it was stored.
"""

from __future__ import annotations

import asyncio
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import resources

from rich.console import Console

from earshot.audio.codecs import Codec
from earshot.cli import fetching, streaming
from earshot.cli.errors import CliError
from earshot.events import SessionId
from earshot.gateways import stopping
from earshot.gateways.g711 import serving
from earshot.settings import Settings

SAMPLE = "hello.alaw"
SAMPLE_RATE = 8000
REAL_URL = fetching.REAL_URL
FETCHED_MODEL = "streaming-paraformer-bilingual-zh-en"
#: Seconds without progress before the demo gives up on the download.
FETCH_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the demo gets the real model, or that it should not try."""

    url: str = REAL_URL
    sha256: str | None = None
    offline: bool = False


def with_model(settings: Settings, source: ModelSource, console: Console) -> Settings:
    """The settings with the real model when it is configured, cached or can be downloaded; with
    the tiny demo model otherwise (said in one line)."""
    if settings.model_dir is not None or settings.triton_url:
        return settings
    tiny = settings.model_copy(update={"demo_model": True})
    if source.offline:
        console.print("--offline: using the tiny model, which makes up its words")
        return tiny
    dest = settings.cache_dir / "models" / FETCHED_MODEL
    try:
        files = fetching.fetch(
            dest, console, url=source.url, sha256=source.sha256, timeout=FETCH_TIMEOUT_SECONDS
        )
    except CliError as exc:
        console.print(f"{exc.cause}: using the tiny model, which makes up its words")
        return tiny
    return settings.model_copy(update={"model_dir": files.encoder.parent})


def sample_audio() -> bytes:
    """The bundled sample: 9.6 s of espeak-ng speech, A-law, 8 kHz."""
    return resources.files("earshot.samples").joinpath(SAMPLE).read_bytes()


async def run(settings: Settings, console: Console, *, speed: float) -> bool:
    """Serve, stream the sample, show the stored transcript, stop.

    Returns:
        Whether it was interrupted (Ctrl-C): the transcript so far is shown all the same.
    """
    started = time.monotonic()
    session = SessionId(f"demo-{int(time.time())}")
    async with AsyncExitStack() as stack:
        with console.status("loading the recogniser (the first run builds a tiny model)"):
            services = await stack.enter_async_context(serving.open_services(settings))
        sock = serving.bind_socket(settings)
        port = sock.getsockname()[1]
        server = stopping.Server(serving.uvicorn_config(settings, services))
        serving_task = asyncio.create_task(server.serve(sockets=[sock]))
        # Its first step installs the server's signal handlers: from then on Ctrl-C stops the
        # server, the stream ends and the transcript so far is shown.
        await asyncio.sleep(0)
        try:
            model = settings.model_dir or "the tiny random-weight model"
            console.print(
                f"gateway up on ws://{settings.host}:{port} (engine {services.recognizer.name}, "
                f"model {model})",
                highlight=False,
            )
            await _stream_sample(
                f"ws://{settings.host}:{port}/ws/transcribe/{session}", server, console, speed
            )
        finally:
            server.should_exit = True
            await serving_task
        segments = await services.stores.segments.segments(session)
    console.rule("transcript")
    console.print(" ".join(s.text for s in segments) or "[yellow](nothing recognised)[/yellow]")
    console.rule()
    console.print(
        f"{len(segments)} segments of session {session} stored in "
        f"{settings.resolved_segments_url()} ({time.monotonic() - started:.1f} s)"
    )
    if settings.model_dir is None:
        console.print(
            "[dim]The tiny random-weight model makes up its words; "
            "run `earshot models fetch` and set EARSHOT_MODEL_DIR for real recognition.[/dim]"
        )
    return server.stopped_by == signal.SIGINT


async def _stream_sample(url: str, server: stopping.Server, console: Console, speed: float) -> None:
    request = streaming.StreamRequest(
        url=url, audio=sample_audio(), codec=Codec.ALAW, rate=SAMPLE_RATE, speed=speed
    )
    try:
        await streaming.run(request, console)
    except CliError:
        # Ctrl-C stopped the server before the client got through: it was interrupted, not broken.
        if server.stopped_by is None:
            raise
