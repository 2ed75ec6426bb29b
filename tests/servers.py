"""Private servers for tests: real processes on free ports in a scratch directory.

Redis, MariaDB, Prometheus, and earshot's own commands (``python -m earshot serve``, ``persister``,
``talk``) as separate processes, each with a registry of its own, as in a pod.

Each server can be stopped and started again on the same port (and, for MariaDB, the same data
directory), so tests can take a store's server away and bring it back. Redis runs without
persistence (``--save '' --appendonly no``): a restarted Redis is empty, like a crashed cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import redis
import sqlalchemy
import yaml

INSTALL_HINT = "apt-get install redis-server mariadb-server prometheus"
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
_READY_TIMEOUT_SECONDS = 60.0
_STOP_TIMEOUT_SECONDS = 30.0


class ServerUnavailableError(RuntimeError):
    """A test server's binary is missing or the server did not come up."""


def find_binary(name: str) -> str:
    """The path of a server binary, or a ServerUnavailableError saying how to install it."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise ServerUnavailableError(
            f"{name} not found in PATH, /usr/sbin or /usr/bin: {INSTALL_HINT}"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """A server process started from a fixed command line, restartable, logging to a file."""

    name = "server"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        return None  # the test process's own

    def start(self) -> Self:
        """Start the server (a no-op when it runs) and wait until it answers."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while not self._answers():
            if self._process.poll() is not None:
                raise ServerUnavailableError(f"{self.name} exited early:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(hard=True)
                raise ServerUnavailableError(
                    f"{self.name} did not answer in time:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, *, hard: bool = False) -> None:
        """Stop the server: SIGTERM and wait (a clean shutdown), or SIGKILL when ``hard``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server for good (its files stay for post-mortems)."""
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _probe(port: int, request: bytes, *, expect: bytes, offset: int = 0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            if request:
                sock.sendall(request)
            reply = sock.recv(64)
    except OSError:
        return False
    return reply[offset : offset + len(expect)] == expect


class RedisServer(_Server):
    """A private ``redis-server`` without persistence."""

    name = "redis"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        """Prepare a server in ``workdir`` (on a free port unless one is given); call start()."""
        self._binary = find_binary("redis-server")
        super().__init__(workdir, port=port)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        """Delete every key of every database."""
        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()

    def _command(self) -> list[str]:
        return [
            self._binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
        ]  # fmt: skip

    def _answers(self) -> bool:
        return _probe(self.port, b"PING\r\n", expect=b"+PONG")


class MariaDbServer(_Server):
    """A private ``mariadbd`` whose ``root`` user has no password, on 127.0.0.1 only."""

    name = "mariadb"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        """Prepare a server in ``workdir`` (on a free port unless one is given); call start().

        The data directory is initialised on the first start and kept across restarts.
        """
        self._install_db = find_binary("mariadb-install-db")
        self._binary = find_binary("mariadbd")
        super().__init__(workdir, port=port)
        self.datadir = workdir / "data"
        self.socket_path = workdir / "mariadb.sock"

    @property
    def url(self) -> str:
        """``mysql://root@127.0.0.1:PORT`` (no database: append ``/name``)."""
        return f"mysql://root@127.0.0.1:{self.port}"

    def database_url(self, database: str) -> str:
        """The URL of one database on this server."""
        return f"{self.url}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database (utf8mb4) and return its URL."""
        self._execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists."""
        self._execute(f"DROP DATABASE IF EXISTS `{name}`")

    def _execute(self, statement: str) -> None:
        engine = sqlalchemy.create_engine(
            f"mysql+pymysql://root@127.0.0.1:{self.port}", poolclass=sqlalchemy.NullPool
        )
        try:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text(statement))
        finally:
            engine.dispose()

    def start(self) -> Self:
        """Initialise the data directory if needed, then start and wait until it answers."""
        if not (self.datadir / "mysql").is_dir():
            self._install()
        return super().start()

    def _install(self) -> None:
        command = [
            self._install_db, "--no-defaults", f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise ServerUnavailableError(f"mariadb-install-db failed:\n{self.log_tail()}")

    def _command(self) -> list[str]:
        command = [
            self._binary, "--no-defaults", f"--datadir={self.datadir}",
            f"--socket={self.socket_path}", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--pid-file={self.workdir / 'mariadb.pid'}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            # mariadbd refuses to run as root unless told to.
            command.append("--user=root")
        return command

    def _answers(self) -> bool:
        # The server's handshake packet: 3-byte length, sequence 0, then protocol version 10.
        return _probe(self.port, b"", expect=b"\x00\x0a", offset=3)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class EarshotProcess(_Server):
    """``python -m earshot COMMAND`` with the given environment; up when ``health`` answers 200.

    ``port`` is the one the command listens on (the caller puts it in ``environment``).
    """

    def __init__(
        self,
        workdir: Path,
        command: str,
        *,
        port: int,
        environment: Mapping[str, str],
        health: str = "/health",
    ) -> None:
        """Prepare ``earshot COMMAND`` in ``workdir``; call start()."""
        self.name = command
        self._subcommand = command
        self._env = {**os.environ, **environment}
        self._health = health
        super().__init__(workdir, port=port)

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "earshot", self._subcommand]

    def _environment(self) -> dict[str, str]:
        return self._env

    def _answers(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.port}{self._health}")


class PrometheusServer(_Server):
    """A private ``prometheus`` with the given configuration and its own TSDB, on 127.0.0.1."""

    name = "prometheus"

    def __init__(self, workdir: Path, config: Mapping[str, object]) -> None:
        """Prepare a server in ``workdir`` that loads ``config`` (prometheus.yml as a mapping)."""
        self._binary = find_binary("prometheus")
        super().__init__(workdir)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str | list[str]) -> object:
        """GET ``/api/v1/PATH``: its ``data``, or an AssertionError carrying Prometheus's error."""
        reply = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30.0)
        body = reply.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def _command(self) -> list[str]:
        return [
            self._binary, f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
        ]  # fmt: skip

    def _answers(self) -> bool:
        return _http_ok(f"{self.url}/-/ready")
