"""Real servers for integration tests: one private Redis and one MariaDB per test session.

Tests are kept apart per test: Redis is flushed before each test, and each test gets a database of
its own. A test may stop a server; the next test's fixture starts it again.

``settings`` is the gateway's embedded default (SQLite and memory, a spool of the test's own);
a module that needs other stores overrides it, and ``services`` opens whatever it names.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

from earshot.gateways.g711 import serving
from earshot.gateways.g711.app import Services
from earshot.settings import Settings
from tests.servers import MariaDbServer, RedisServer, ServerUnavailableError

S = TypeVar("S", RedisServer, MariaDbServer)


def _started(server_type: type[S], workdir: Path) -> S:
    try:
        return server_type(workdir).start()
    except ServerUnavailableError as exc:
        # Never skip: a machine without the servers must not pass the integration suite silently.
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for the whole test session."""
    server = _started(RedisServer, tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDbServer]:
    """A private MariaDB for the whole test session."""
    server = _started(MariaDbServer, tmp_path_factory.mktemp("mariadb"))
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the running, empty Redis."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def mysql_url(mariadb_server: MariaDbServer) -> Iterator[str]:
    """The URL (``mysql://root@host:port/db``) of a fresh, empty database of this test alone."""
    mariadb_server.start()
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = mariadb_server.create_database(name)
    yield url
    mariadb_server.start()
    mariadb_server.drop_database(name)


@pytest.fixture
def settings(tmp_path: Path, tiny_model_cache: Path) -> Settings:
    """The embedded default: the tiny in-process engine, memory partials, a SQLite file."""
    return Settings(
        cache_dir=tiny_model_cache,
        segments_url=f"sqlite:///{tmp_path / 'seg.db'}",
        spool_dir=tmp_path / "spool",
    )


@pytest_asyncio.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The engine, the stores and the journal the settings name, opened for one test."""
    async with serving.open_services(settings) as opened:
        yield opened
