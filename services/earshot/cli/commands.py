"""Command-line entry points (typer). Each command builds the settings and hands them down.

Every failure a user can cause or fix ends in one line on stderr with the cause and a hint, and the
exit code of :mod:`earshot.cli.errors`; Ctrl-C ends a command at once with 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

import earshot
from earshot.audio.codecs import Codec
from earshot.cli import demoing, logs, settings_help, streaming
from earshot.cli.errors import INTERRUPTED, USAGE, CliError
from earshot.engines import loading
from earshot.settings import Settings

FETCHED_MODEL = demoing.FETCHED_MODEL
T = TypeVar("T")

app = typer.Typer(
    help="earshot: live speech-to-text for telephony and Nextcloud Talk.",
    epilog="Every server setting is an EARSHOT_* variable (or .env entry): `earshot config` "
    "lists them with their values.",
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Fetch or build recognition models.")
app.add_typer(models_app, name="models")
transcripts_app = typer.Typer(help="Read stored transcripts (telephony sessions and Talk calls).")
app.add_typer(transcripts_app, name="transcripts")
err = Console(stderr=True, soft_wrap=True, highlight=False)
_help = settings_help.option_help

LogFormat = Annotated[
    str | None,
    typer.Option(help=_help("log_format", "Log format: text or json."), show_default=False),
]
DemoModel = Annotated[
    bool | None,
    typer.Option(
        "--demo-model/--no-demo-model",
        help=_help("demo_model", "Without a model, use the tiny random-weight one."),
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"earshot {earshot.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """earshot: live speech-to-text for telephony and Nextcloud Talk."""


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment plus command-line overrides, or exit with why not."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        _print_problems(exc, "invalid configuration")
        raise typer.Exit(USAGE) from None


def _print_problems(exc: ValidationError, what: str) -> None:
    """One line per invalid setting: the variable and why."""
    for problem in exc.errors():
        # A check across settings has no field: its message names the variables itself.
        where = [".".join(str(p) for p in problem["loc"])] if problem["loc"] else []
        cause = problem.get("ctx", {}).get("error", problem["msg"])
        err.print(": ".join(["earshot: error", what, *where, str(cause)]), markup=False)


def _run(
    work: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run a command's coroutine (on a loop from ``loop_factory``, default asyncio's); known
    failures end in one line, Ctrl-C in 130."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(work)
    except CliError as exc:
        err.print(exc.line(), markup=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("earshot: interrupted")
        raise typer.Exit(INTERRUPTED) from None


def _fail(exc: CliError) -> typer.Exit:
    err.print(exc.line(), markup=False)
    return typer.Exit(exc.exit_code)


def _start_server(settings: Settings, *, needs_model: bool = True) -> None:
    """What every server command checks before it opens anything: a model, and its logs."""
    try:
        if needs_model:
            loading.require_model(settings)
    except loading.NoModelConfigured as exc:
        raise _fail(CliError(str(exc), exit_code=USAGE)) from None
    try:
        logs.configure(settings)
    except OSError as exc:
        raise _fail(
            CliError(f"cannot write logs to {settings.log_dir}: {exc}", "check LOG_DIR")
        ) from None


def _stopped_by(signum: int | None) -> None:
    if signum == signal.SIGINT:
        raise typer.Exit(INTERRUPTED)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help=_help("host", "Address to listen on."))] = None,
    port: Annotated[int | None, typer.Option(help=_help("port", "Port to listen on."))] = None,
    demo_model: DemoModel = None,
    log_format: LogFormat = None,
    workers: Annotated[
        int | None, typer.Option(help=_help("workers", "Gateway processes on the port."))
    ] = None,
) -> None:
    """Run the telephony gateway (embedded default: in-process engine, SQLite, memory)."""
    import uvloop

    from earshot.gateways.g711 import serving

    settings = load_settings(
        host=host, port=port, demo_model=demo_model, log_format=log_format, workers=workers
    )
    _start_server(settings)
    _stopped_by(_run(_serving(serving.serve(settings), settings), uvloop.new_event_loop))


async def _serving(work: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Translate a server's start-up failures into one line each."""
    from earshot.engines.tiny_paraformer import ModelFilesMissing
    from earshot.gateways.g711.following import FollowError
    from earshot.storage.ports import StorageError

    try:
        return await work
    except FollowError as exc:
        raise CliError(
            f"pool {settings.pool}: cannot follow its sessions: {exc}",
            "the pool's service account needs list and watch on transcriptionsessions",
        ) from None
    except ModelFilesMissing as exc:
        raise CliError(
            f"the model in {settings.model_dir} is incomplete: {exc}",
            "point EARSHOT_MODEL_DIR at the folder `earshot models fetch` made",
            exit_code=USAGE,
        ) from None
    except StorageError as exc:
        raise CliError(
            f"cannot open the stores: {exc}", "check EARSHOT_SEGMENTS_URL and EARSHOT_PARTIALS_URL"
        ) from None
    except OSError as exc:
        raise CliError(
            f"cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}",
            "pick another address or port (--host, --port)",
        ) from None


@app.command()
def persister(
    port: Annotated[
        int | None, typer.Option(help=_help("persister_port", "Port of /health and /metrics."))
    ] = None,
    log_format: LogFormat = None,
) -> None:
    """Run the persister sidecar: drain the spool into Redis and MySQL (or SQLite and memory)."""
    from earshot.persistence import sidecar

    settings = load_settings(persister_port=port, log_format=log_format)
    try:
        logs.configure(settings)
    except OSError as exc:
        raise _fail(CliError(f"cannot write logs to {settings.log_dir}: {exc}")) from None
    _run(sidecar.run(settings))


@app.command()
def talk(
    port: Annotated[int | None, typer.Option(help="Port of the ExApp (default: APP_PORT).")] = None,
    demo_model: DemoModel = None,
    log_format: LogFormat = None,
) -> None:
    """Run the Nextcloud Talk live-caption ExApp (app id live_transcription)."""
    from earshot.gateways.talk import serving as talk_serving
    from earshot.gateways.talk.configuration import TalkSettings

    settings = load_settings(demo_model=demo_model, log_format=log_format)
    overrides: dict[str, Any] = {"app_port": port} if port is not None else {}
    try:
        talk_settings = TalkSettings(**overrides)
    except ValidationError as exc:
        _print_problems(exc, "invalid Talk configuration")
        raise typer.Exit(USAGE) from None
    # The ExApp in a cluster hands rooms to room gateways (which recognise): it needs no model.
    hands_rooms_on = talk_settings.in_cluster and not talk_settings.room_mode
    _start_server(settings, needs_model=not hands_rooms_on)
    refusal = talk_settings.refusal() or talk_settings.language_refusal(
        talk_settings.captioning_engine(settings.engine)
    )
    if not refusal and settings.workers != 1:
        refusal = (
            f"EARSHOT_WORKERS={settings.workers}: the Talk ExApp runs as one process (its rooms "
            "are per process); use 1, and EARSHOT_INFERENCE_WORKERS for more recogniser threads"
        )
    if refusal:
        raise _fail(CliError(refusal, exit_code=USAGE))
    _run(talk_serving.serve(settings, talk_settings))


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="WAV file, raw file in --codec, or - for stdin.")],
    url: Annotated[
        str,
        typer.Option(
            help="Gateway base URL, or a session's whole ENDPOINT "
            "(ws://host/ws/transcribe/ID?token=...).",
            envvar="EARSHOT_STREAM_URL",
            show_envvar=True,
        ),
    ] = "ws://127.0.0.1:8000",
    session: Annotated[
        str | None,
        typer.Option(
            help=f"Session id [default: the one in --url, or {streaming.DEFAULT_SESSION}]"
        ),
    ] = None,
    codec: Annotated[Codec, typer.Option(help="Encoding to send.")] = Codec.ALAW,
    rate: Annotated[int, typer.Option(help="Sample rate to send, Hz.")] = 8000,
    speed: Annotated[
        float, typer.Option(help="Times real time; 0 sends as fast as possible.")
    ] = 1.0,
    frame_ms: Annotated[int, typer.Option(help="Milliseconds of audio per frame.")] = 20,
    token: Annotated[
        str | None,
        typer.Option(
            help="Access token of the session (also taken from --url's ?token=).",
            envvar="EARSHOT_STREAM_TOKEN",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Stream audio to a gateway, showing partials in place and finals as lines."""
    try:
        endpoint = streaming.resolve_endpoint(url, session=session, token=token)
        audio = _read_audio(source, codec, rate)
    except CliError as exc:
        raise _fail(exc) from None
    request = streaming.StreamRequest(
        url=endpoint.url,
        audio=audio,
        codec=codec,
        rate=rate,
        speed=speed,
        frame_ms=frame_ms,
        token=endpoint.token,
    )
    result = _run(streaming.run(request, Console(soft_wrap=True)))
    if result.errors:
        raise typer.Exit(1)


def _read_audio(source: str, codec: Codec, rate: int) -> bytes:
    if source != "-":
        return streaming.read_source(Path(source), codec, rate)
    try:
        return sys.stdin.buffer.read()
    except KeyboardInterrupt:
        err.print("earshot: interrupted")
        raise typer.Exit(INTERRUPTED) from None


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="Times real time for the bundled sample.")] = 2.0,
    offline: Annotated[
        bool, typer.Option(help="Do not try to download the real model: use the tiny one.")
    ] = False,
    model_url: Annotated[
        str, typer.Option(help="Where the real model's .tar.bz2 is published.")
    ] = demoing.REAL_URL,
    model_sha256: Annotated[
        str | None,
        typer.Option(help=escape("SHA-256 the download must have [default: not pinned].")),
    ] = None,
) -> None:
    """Stream the bundled sample through a gateway on the embedded default; print the transcript.

    The real model is downloaded once into the cache when it can be; offline the tiny model
    (random weights: invented words) runs instead.
    """
    settings = load_settings(
        port=0, audio_codec=Codec.ALAW, audio_rate=demoing.SAMPLE_RATE, log_level="warning"
    )
    console = Console(soft_wrap=True)
    source = demoing.ModelSource(url=model_url, sha256=model_sha256, offline=offline)
    try:
        settings = demoing.with_model(settings, source, console)
    except KeyboardInterrupt:
        err.print("earshot: interrupted")
        raise typer.Exit(INTERRUPTED) from None
    if _run(demoing.run(settings, console, speed=speed)):
        raise typer.Exit(INTERRUPTED)


@app.command()
def config() -> None:
    """Print every server setting: its variables (EARSHOT_* first, older names after) and value."""
    settings = load_settings()
    out = Console(soft_wrap=True, highlight=False)
    for line in settings_help.effective(settings):
        out.print(line, markup=False)


@models_app.command("fetch")
def models_fetch(
    dest: Annotated[
        Path | None,
        typer.Option(
            help=escape(f"Model directory to create [default: <cache>/models/{FETCHED_MODEL}].")
        ),
    ] = None,
    url: Annotated[str, typer.Option(help="Where the .tar.bz2 is published.")] = demoing.REAL_URL,
    sha256: Annotated[
        str | None,
        typer.Option(help=escape("SHA-256 the download must have [default: not pinned].")),
    ] = None,
) -> None:
    """Download the real bilingual zh-en streaming Paraformer published by sherpa-onnx."""
    from earshot.cli import fetching

    settings = load_settings()
    console = Console(soft_wrap=True)
    target = dest or settings.cache_dir / "models" / FETCHED_MODEL
    try:
        files = fetching.fetch(target, console, url=url, sha256=sha256)
    except CliError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        err.print("earshot: interrupted")
        raise typer.Exit(INTERRUPTED) from None
    console.print(f"model ready in {files.encoder.parent}")
    console.print(f"use it with: EARSHOT_MODEL_DIR={files.encoder.parent} earshot serve")


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
    except InvalidSessionId as exc:
        raise _fail(CliError(str(exc), exit_code=USAGE)) from None
    except transcripts.UnknownTranscript as exc:
        raise _fail(CliError(str(exc), "check the session id")) from None
    except StorageError as exc:
        raise _fail(CliError(str(exc), "check EARSHOT_SEGMENTS_URL")) from None
    out = Console(soft_wrap=True, highlight=False)
    for text in transcripts.render(loaded):
        out.print(text, markup=False)


def main() -> None:
    """Entry point of the ``earshot`` console script."""
    app()
