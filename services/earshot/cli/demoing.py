"""``earshot demo``: the whole telephony path in one process, on the embedded default.

Starts the gateway on a free port, streams the bundled A-law sample through a real WebSocket, then
prints the transcript as stored and where it was stored.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from importlib import resources

from rich.console import Console

from earshot.audio.codecs import Codec
from earshot.cli import streaming
from earshot.events import SessionId
from earshot.gateways.g711 import serving
from earshot.settings import Settings

SAMPLE = "hello.alaw"
SAMPLE_RATE = 8000


def sample_audio() -> bytes:
    """The bundled sample: 9.6 s of espeak-ng speech, A-law, 8 kHz."""
    return resources.files("earshot.samples").joinpath(SAMPLE).read_bytes()


async def run(settings: Settings, console: Console, *, speed: float) -> None:
    """Serve, stream the sample, show the stored transcript, stop."""
    started = time.monotonic()
    session = SessionId(f"demo-{int(time.time())}")
    async with AsyncExitStack() as stack:
        with console.status("loading the recogniser (the first run builds a tiny model)"):
            services = await stack.enter_async_context(serving.open_services(settings))
        sock = serving.bind_socket(settings)
        port = sock.getsockname()[1]
        server = serving.gateway_server(settings, services)
        serving_task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            console.print(
                f"gateway up on ws://{settings.host}:{port} (engine {services.recognizer.name})"
            )
            await streaming.run(
                streaming.StreamRequest(
                    url=f"ws://{settings.host}:{port}/ws/transcribe/{session}",
                    audio=sample_audio(),
                    codec=Codec.ALAW,
                    rate=SAMPLE_RATE,
                    speed=speed,
                ),
                console,
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
