"""Storage backends chosen by URL scheme.

Partials: ``memory://``, ``redis://``, ``rediss://``, ``unix://`` (a Redis socket).
Segments: ``sqlite:///path`` and ``mysql://user:pass@host/db``; the driver suffixes the older
server's ``MYSQL_DATABASE_URL`` may carry (``+pymysql``, ``+aiomysql``, ``+aiosqlite``) are accepted
and replaced by the async driver earshot uses.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from earshot.storage.memory import MemoryPartialStore
from earshot.storage.ports import PartialStore, SegmentStore
from earshot.storage.redis_partials import RedisPartialStore
from earshot.storage.sql_segments import SqlSegmentStore


def _memory(_url: str, ttl_seconds: int) -> PartialStore:
    return MemoryPartialStore(ttl_seconds=ttl_seconds)


def _redis(url: str, ttl_seconds: int) -> PartialStore:
    return RedisPartialStore.from_url(url, ttl_seconds=ttl_seconds)


_PARTIAL_BACKENDS: dict[str, Callable[[str, int], PartialStore]] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "unix": _redis,
}

# URL scheme -> the SQLAlchemy async driver that serves it.
_SEGMENT_DRIVERS: dict[str, str] = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "mysql": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
}


def _scheme(url: str) -> str:
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def _unsupported(kind: str, url: str, supported: list[str]) -> ValueError:
    # Only the scheme is quoted: the rest of the URL may hold a password.
    scheme = _scheme(url) or "(none)"
    names = ", ".join(f"{name}://" for name in supported)
    return ValueError(f"unsupported {kind} URL scheme {scheme!r}; supported schemes: {names}")


def open_partial_store(url: str, *, ttl_seconds: int) -> PartialStore:
    """Create the partial store a URL names; nothing connects until the first call.

    Args:
        url: ``memory://``, ``redis://host:port/db``, ``rediss://...`` or ``unix:///path?db=N``.
        ttl_seconds: how long a partial lives after its last write.

    Raises:
        ValueError: for any other scheme.
    """
    backend = _PARTIAL_BACKENDS.get(_scheme(url))
    if backend is None:
        raise _unsupported("partial store", url, list(_PARTIAL_BACKENDS))
    return backend(url, ttl_seconds)


async def open_segment_store(url: str) -> SegmentStore:
    """Connect to the segment store a URL names and create its missing tables.

    Args:
        url: ``sqlite:///path`` or ``mysql://user:pass@host:port/db``, optionally with a driver
            suffix (``+aiosqlite``, ``+aiomysql``, ``+pymysql``).

    Raises:
        ValueError: for any other scheme, or a URL SQLAlchemy cannot parse.
        StorageError: when the database cannot be reached or the tables cannot be created.
    """
    driver = _SEGMENT_DRIVERS.get(_scheme(url))
    if driver is None:
        raise _unsupported("segment store", url, list(_SEGMENT_DRIVERS))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"malformed segment store URL ({_scheme(url)}://...): {exc}") from exc
    return await SqlSegmentStore.open(parsed.set(drivername=driver))
