"""A real ``earshot persister`` sidecar for tests: a subprocess with its own /health and /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from earshot.audio.codecs import Codec
from earshot.cli import demoing, streaming
from earshot.gateways.g711 import client
from tests.servers import free_port


class PersisterProcess:
    """``python -m earshot persister`` on a spool directory, logging to a file."""

    def __init__(
        self,
        workdir: Path,
        *,
        spool_dir: Path,
        segments_url: str,
        partials_url: str,
        batch_size: int = 100,
    ) -> None:
        self.port = free_port()
        self.log_path = workdir / "persister.log"
        self.env = {
            **os.environ,
            "EARSHOT_SPOOL_DIR": str(spool_dir),
            "EARSHOT_SEGMENTS_URL": segments_url,
            "EARSHOT_PARTIALS_URL": partials_url,
            "EARSHOT_PERSISTER_PORT": str(self.port),
            "EARSHOT_PERSISTER_BATCH_SIZE": str(batch_size),
            "EARSHOT_PERSISTER_RETRY_MAX_SECONDS": "0.5",
            "EARSHOT_LOG_LEVEL": "info",
        }
        self._process: asyncio.subprocess.Process | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self._process is not None, "not started"
        return self._process.pid

    async def start(self) -> None:
        """Start the process and wait until it answers /health."""
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "earshot",
                "persister",
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await wait_until(self._healthy, 30.0, what=f"persister /health\n{self.log_tail()}")

    async def _healthy(self) -> bool:
        assert self._process is not None
        if self._process.returncode is not None:
            raise AssertionError(f"persister exited:\n{self.log_tail()}")
        try:
            await self.get("/health")
        except httpx.HTTPError:
            return False
        return True

    async def get(self, path: str) -> httpx.Response:
        """GET a path of its HTTP port."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            return await client.get(self.url + path)

    async def caught_up(self) -> bool:
        """Whether its last round found nothing left to drain."""
        return bool((await self.get("/health")).json()["caught_up"])

    async def stop(self, *, hard: bool = False) -> int:
        """SIGTERM (drain, then exit) or SIGKILL; waits for the exit and returns its status."""
        process, self._process = self._process, None
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 30.0)
        except TimeoutError:
            process.kill()
            return await process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, *, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def rows(mysql_url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    """The rows a query returns from a MySQL URL (``mysql://...``)."""
    engine = create_async_engine(mysql_url.replace("mysql://", "mysql+aiomysql://", 1))
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(sa.text(sql), params)]
    finally:
        await engine.dispose()


async def stored_finals(mysql_url: str, session_id: str) -> list[tuple[int, str]]:
    """A session's (segment_seq, content) rows in order."""
    found = await rows(
        mysql_url,
        "SELECT segment_seq, content FROM segments WHERE session_id = :s ORDER BY segment_seq",
        s=session_id,
    )
    return [(int(seq), str(content)) for seq, content in found]  # type: ignore[call-overload]


def speech_frames(*, repeat: int = 1, frame_ms: int = 20) -> list[bytes]:
    """The bundled sample ``repeat`` times with trailing silence, in frames of ``frame_ms``."""
    audio = streaming.with_trailing_silence(demoing.sample_audio() * repeat, Codec.ALAW, 8000)
    return client.frames_of(audio, codec=Codec.ALAW, rate=8000, frame_ms=frame_ms)
