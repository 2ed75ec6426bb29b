"""The ``earshot`` command as a new user meets it: real processes, real servers, real signals.

Every user mistake ends in one line on stderr with the cause and a hint, and exit code 2 (usage)
or 1 (runtime); Ctrl-C ends a command at once with 130 and a server without an asyncio error.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import earshot
from earshot.cli import streaming
from earshot.cli.errors import CliError

TOKEN = "s3cret-token"
REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    paths = os.pathsep.join([str(REPO / "services"), str(REPO / "operator")])
    return {**os.environ, "PYTHONPATH": paths, "COLUMNS": "200", **extra}


def earshot_run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "earshot", *args],
        env=_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Served:
    """A running ``earshot serve`` (tiny model) and where its log goes."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def start_serve(folder: Path, *args: str, **env: str) -> Served:
    port = _free_port()
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "earshot", "serve", "--demo-model", *args],
            env=_env(
                EARSHOT_PORT=str(port),
                EARSHOT_CACHE_DIR=env.pop("EARSHOT_CACHE_DIR"),
                EARSHOT_SPOOL_DIR=str(folder / "spool"),
                EARSHOT_SEGMENTS_URL=f"sqlite:///{folder / 'seg.db'}",
                **env,
            ),
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return Served(process, port, log)
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"serve did not start: {log.read_text()}")


def stop(served: Served) -> None:
    if served.process.poll() is None:
        served.process.kill()
        served.process.wait()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One gateway for the stream tests: it needs the token, and serves any session."""
    folder = tmp_path_factory.mktemp("gateway")
    served = start_serve(
        folder,
        EARSHOT_CACHE_DIR=str(folder / "cache"),
        EARSHOT_ACCESS_TOKEN=TOKEN,
        # A machine shared with other test runs must not turn a slow chunk into an overload.
        EARSHOT_INFERENCE_QUEUE_TIMEOUT_SECONDS="60",
    )
    yield served
    stop(served)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample as a raw A-law file."""
    from earshot.cli import demoing

    path = tmp_path_factory.mktemp("audio") / "hello.alaw"
    path.write_bytes(demoing.sample_audio())
    return path


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    done = earshot_run("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"earshot {earshot.__version__}"


def test_help_shows_each_options_variables_and_default(tmp_path: Path) -> None:
    done = earshot_run("serve", "--help", cwd=tmp_path)
    assert done.returncode == 0
    flat = " ".join(done.stdout.split())
    assert (
        "[env: EARSHOT_HOST, APP_HOST; default: 127.0.0.1; 0.0.0.0 with the older server's "
        "variables]"
    ) in flat
    assert "[env: EARSHOT_PORT, APP_PORT; default: 8000]" in flat
    assert "[env: EARSHOT_DEMO_MODEL; default: False]" in flat


def test_config_lists_every_variable_with_its_value(tmp_path: Path) -> None:
    done = earshot_run(
        "config",
        cwd=tmp_path,
        APP_PORT="9000",
        EARSHOT_ACCESS_TOKEN="hidden",
        EARSHOT_SEGMENTS_URL="mysql+aiomysql://earshot:dbsecret@db:3306/earshot",
    )
    assert done.returncode == 0, done.stderr
    assert "EARSHOT_PORT | APP_PORT = 9000\n" in done.stdout
    assert "EARSHOT_ACCESS_TOKEN = ***\n" in done.stdout
    assert "mysql+aiomysql://earshot:***@db:3306/earshot" in done.stdout
    assert "hidden" not in done.stdout
    assert "dbsecret" not in done.stdout
    assert "EARSHOT_INFERENCE_QUEUE_TIMEOUT_SECONDS | ASR_INFERENCE_QUEUE_TIMEOUT_SECONDS" in (
        done.stdout
    )


@pytest.mark.parametrize("command", [["serve"], ["talk"]])
def test_a_server_without_a_model_refuses_to_start_in_one_line(
    command: list[str], tmp_path: Path
) -> None:
    done = earshot_run(*command, cwd=tmp_path, EARSHOT_CACHE_DIR=str(tmp_path))
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("earshot: error: no model configured")
    assert "EARSHOT_MODEL_DIR" in line
    assert "--demo-model" in line
    assert not (tmp_path / "models").exists(), "the tiny model was built all the same"


def test_a_model_directory_given_is_used_as_given(tmp_path: Path) -> None:
    done = earshot_run(
        "serve", cwd=tmp_path, EARSHOT_MODEL_DIR=str(tmp_path / "nope"), EARSHOT_PORT="0"
    )
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"the model in {tmp_path / 'nope'} is incomplete" in line


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = earshot_run(
            "serve",
            "--demo-model",
            "--port",
            str(port),
            cwd=tmp_path,
            EARSHOT_CACHE_DIR=str(tmp_path),
        )
    assert done.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in one_line(done.stderr)


def test_invalid_configuration_is_one_line_per_problem_with_exit_2(tmp_path: Path) -> None:
    done = earshot_run("serve", cwd=tmp_path, APP_PORT="eighty")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("earshot: error: invalid configuration: EARSHOT_PORT")


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["serve", "--demo-model", "--port", "0"], "check EARSHOT_SEGMENTS_URL and"),
        (["transcripts", "show", "call-1"], "check EARSHOT_SEGMENTS_URL"),
    ],
)
def test_a_store_that_cannot_be_reached_is_one_line_with_exit_1(
    command: list[str], hint: str, tmp_path: Path
) -> None:
    port = _free_port()  # nothing listens there: a real refused connection
    done = earshot_run(
        *command,
        cwd=tmp_path,
        EARSHOT_CACHE_DIR=str(tmp_path),
        EARSHOT_SEGMENTS_URL=f"mysql://earshot:pw@127.0.0.1:{port}/earshot",
    )
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("earshot: error: ")
    assert "segment store at mysql+aiomysql://earshot:***@" in line  # no password shown
    assert "Can't connect to MySQL server" in line
    assert "sqlalche.me" not in line
    assert f"(hint: {hint}" in line


def test_a_refused_connection_is_one_line_with_exit_1(speech: Path, tmp_path: Path) -> None:
    port = _free_port()
    done = earshot_run("stream", str(speech), "--url", f"ws://127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "connection refused" in line
    assert "is `earshot serve` running there?" in line


@pytest.mark.parametrize("url", ["http:/nohost", "ftp://example.org", "127.0.0.1:8000"])
def test_a_url_that_is_not_a_websocket_url_is_a_usage_error(
    url: str, speech: Path, tmp_path: Path
) -> None:
    done = earshot_run("stream", str(speech), "--url", url, cwd=tmp_path)
    assert done.returncode == 2
    assert "is not a WebSocket URL" in one_line(done.stderr)


def test_a_wrong_path_is_explained_not_a_bare_403(
    gateway: Served, speech: Path, tmp_path: Path
) -> None:
    done = earshot_run("stream", str(speech), "--url", f"{gateway.base}/transcribe", cwd=tmp_path)
    # The base URL is used as a prefix: /transcribe/ws/transcribe/cli is no route of the gateway.
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "answered HTTP 403 instead of a WebSocket" in line
    assert "/ws/transcribe/<session>" in line


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("notes.wav", b"just text", "is named .wav but is not a WAV file"),
        ("song.mp3", b"ID3\x04\x00\x00\x00\x00\x00\x00", "is MP3, not a WAV or raw audio"),
        ("broken.wav", b"RIFF\x00\x00\x00\x00WAVEjunk", "is not a WAV file this client reads"),
    ],
)
def test_a_file_that_is_not_audio_it_reads_is_a_usage_error(
    name: str, content: bytes, expected: str, tmp_path: Path
) -> None:
    (tmp_path / name).write_bytes(content)
    done = earshot_run("stream", name, cwd=tmp_path)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert expected in line
    assert "hint: convert it" in line


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = earshot_run("stream", "nope.wav", cwd=tmp_path)
    assert done.returncode == 2
    assert (
        one_line(done.stderr)
        == "earshot: error: no such audio file: nope.wav (hint: check the path)"
    )


def test_the_whole_endpoint_of_a_session_is_accepted_and_a_summary_ends_the_stream(
    gateway: Served, speech: Path, tmp_path: Path
) -> None:
    endpoint = f"{gateway.base}/ws/transcribe/call-7?token={TOKEN}"
    done = earshot_run("stream", str(speech), "--url", endpoint, "--speed", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *shown, summary = done.stdout.strip().splitlines()
    finals = [line for line in shown if line.strip()[:1].isdigit()]
    assert finals, done.stdout
    noun = "final" if len(finals) == 1 else "finals"
    assert summary.startswith(f"{len(finals)} {noun}, 9.6 s of audio in ")
    assert summary.endswith(
        f"session call-7 is stored by the gateway at {gateway.base}/ws/transcribe/call-7"
    )
    assert TOKEN not in done.stdout


def test_without_the_token_the_gateways_refusal_is_shown_and_exit_is_1(
    gateway: Served, speech: Path, tmp_path: Path
) -> None:
    done = earshot_run("stream", str(speech), "--url", gateway.base, "--speed", "0", cwd=tmp_path)
    assert done.returncode == 1
    assert "error unauthorized:" in done.stdout


def _wait_for(path: Path, text: str, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while text not in path.read_text(errors="replace"):
        assert process.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.1)


def _interruptible() -> None:
    """In the child, before it runs: Ctrl-C as at a terminal, whatever the test run's own state (a
    shell's background job ignores SIGINT, and an ignored or blocked signal is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_ends_a_stream_at_once_with_130(
    gateway: Served, speech: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stream.out"
    # Three times the sample (29 s at real time): on a loaded machine the gateway's log line can
    # come seconds late, and the signal must still find the stream sending.
    long = tmp_path / "long.alaw"
    long.write_bytes(speech.read_bytes() * 3)
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "earshot",
                "stream",
                str(long),
                "--url",
                gateway.base,
                "--token",
                TOKEN,
                "--session",
                "interrupted",
            ],
            env=_env(),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=_interruptible,
        )
    try:
        # The gateway logs the WebSocket of this session once the stream is under way.
        _wait_for(gateway.log, "/ws/transcribe/interrupted", process, 60)
        process.send_signal(signal.SIGINT)
        # Before the fix it waited for the gateway's idle timeout (300 s) or a second Ctrl-C;
        # the 29 s of audio at real time would not be sent by now either.
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    shown = out.read_text()
    assert code == 130, shown
    assert shown.strip().splitlines()[-1] == "earshot: interrupted"
    assert "s of audio in" not in shown, "the stream ran to its end: the signal came too late"


def test_ctrl_c_stops_serve_cleanly_without_error_logs(tmp_path: Path) -> None:
    served = start_serve(tmp_path, EARSHOT_CACHE_DIR=str(tmp_path / "cache"))
    try:
        served.process.send_signal(signal.SIGINT)
        code = served.process.wait(timeout=30)
    finally:
        stop(served)
    log = served.log.read_text()
    assert code == 130, log
    assert "Finished server process" in log
    assert " ERROR " not in log
    assert "Traceback" not in log


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    served = start_serve(
        tmp_path, "--log-format", "json", EARSHOT_CACHE_DIR=str(tmp_path / "cache")
    )
    try:
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=30)
    finally:
        stop(served)
    entries = [json.loads(line) for line in served.log.read_text().splitlines() if line]
    assert code == 0
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["logger"] == "earshot.gateways.g711.serving" for e in entries)
    assert any(e["message"].startswith("Finished server process") for e in entries)


def test_an_offline_models_fetch_is_one_line_with_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/model.tar.bz2"
    done = earshot_run("models", "fetch", "--url", url, "--dest", str(tmp_path / "m"), cwd=tmp_path)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("earshot: error: offline: cannot reach 127.0.0.1")
    assert "hint: check the network" in line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("url", "session", "token", "expected"),
    [
        ("ws://gw:8000", None, None, ("ws://gw:8000/ws/transcribe/cli", "cli", None)),
        ("ws://gw:8000/", "a-1", "t", ("ws://gw:8000/ws/transcribe/a-1", "a-1", "t")),
        (
            "ws://gw.ns.svc:8000/ws/transcribe/s-9?token=abc",
            None,
            None,
            ("ws://gw.ns.svc:8000/ws/transcribe/s-9", "s-9", "abc"),
        ),
        (
            "https://asr.example.org/",
            "x",
            None,
            ("wss://asr.example.org/ws/transcribe/x", "x", None),
        ),
        (
            "wss://asr.example.org/tel/ws/transcribe/s-9",
            "s-9",
            None,
            ("wss://asr.example.org/tel/ws/transcribe/s-9", "s-9", None),
        ),
    ],
)
def test_the_url_may_be_a_base_or_a_sessions_endpoint(
    url: str,
    session: str | None,
    token: str | None,
    expected: tuple[str, str, str | None],
) -> None:
    endpoint = streaming.resolve_endpoint(url, session=session, token=token)
    assert (endpoint.url, endpoint.session, endpoint.token) == expected


@pytest.mark.parametrize(
    ("session", "token", "message"),
    [
        ("other", None, "--session 'other' disagrees with the session 's-9' in --url"),
        (None, "different", "--token disagrees with the token in --url"),
    ],
)
def test_a_url_and_options_that_disagree_are_refused(
    session: str | None, token: str | None, message: str
) -> None:
    with pytest.raises(CliError) as refused:
        streaming.resolve_endpoint(
            "ws://gw/ws/transcribe/s-9?token=abc", session=session, token=token
        )
    assert refused.value.cause == message
    assert refused.value.exit_code == 2


def test_ctrl_c_during_the_demo_shows_the_transcript_so_far_and_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "earshot", "demo", "--offline", "--speed", "0.5"],
            env=_env(EARSHOT_CACHE_DIR=str(tmp_path)),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=_interruptible,
        )
    try:
        _wait_for(out, "gateway up on", process, 120)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    shown = out.read_text()
    assert code == 130, shown
    assert "transcript" in shown
    assert " ERROR " not in shown
    assert "Traceback" not in shown


def test_a_cause_quoted_over_several_lines_is_printed_on_one() -> None:
    error = CliError("the driver said:\n  (2003) refused\n\n(see its docs)", "check the URL")
    assert error.line() == (
        "earshot: error: the driver said: (2003) refused (see its docs) (hint: check the URL)"
    )
