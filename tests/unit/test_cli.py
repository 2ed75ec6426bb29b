"""The ``earshot`` command as a user runs it: a real process (and, for the event loop, the
command in process)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop
from typer.testing import CliRunner

from earshot.cli.commands import app
from earshot.gateways.g711 import serving
from earshot.settings import Settings


def _earshot(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "earshot", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unknown_codec_stops_serve_at_start_up_with_a_clear_error(tmp_path: Path) -> None:
    done = _earshot("serve", env={"AUDIO_INPUT_FORMAT": "gsm"}, cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr
    assert "unknown audio codec 'gsm'; use one of: alaw, ulaw, pcm16le" in done.stderr


def test_stream_of_a_missing_file_says_which_file(tmp_path: Path) -> None:
    done = _earshot("stream", str(tmp_path / "nope.wav"), env={}, cwd=tmp_path)
    assert done.returncode != 0
    assert f"no such audio file: {tmp_path / 'nope.wav'}" in done.stderr


def test_demo_prints_a_transcript_stored_in_sqlite(tmp_path: Path) -> None:
    done = _earshot(
        "demo", "--speed", "0", "--offline", env={"EARSHOT_CACHE_DIR": str(tmp_path)}, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "transcript" in done.stdout
    assert f"stored in sqlite:///{tmp_path}/earshot.sqlite3" in done.stdout
    assert "(nothing recognised)" not in done.stdout


def test_serve_runs_the_gateway_on_uvloop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the gateway's own work is left out: only the loop `earshot serve` runs it on is observed
    loops: list[type[asyncio.AbstractEventLoop]] = []

    async def serve(settings: Settings) -> None:
        loops.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(serving, "serve", serve)
    result = CliRunner().invoke(app, ["serve", "--demo-model"], env={"LOG_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert loops == [uvloop.Loop]
