"""The Redis partial store, with the keys of the telephony server it replaces (PROTOCOLS.md §1).

* ``asr:sess:{id}:current``: a hash ``{content, seq, ts}`` with a TTL, rewritten by every partial.
  ``ts`` is the partial's time as Unix seconds, a decimal string with microseconds
  (``"1763690000.123456"``): what ``time.time()`` wrote in the older server, and sortable.
* ``asr:sess:{id}:seq``: the number of the session's last final, an integer string without TTL.
* ``asr:sess:{id}:gateway``: the session's lease (earshot's own key, unknown to the older server):
  ``held:<holder>`` with a TTL its holder renews while it streams, then ``free:<last told seq>``
  for a while after it let go, so that the next holder numbers on even before the last finals
  are drained into the segment store.

The counter is raised by a Lua script so that it never goes down, whatever order writers run in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from earshot.events import Partial, SessionId
from earshot.storage.ports import LeaseClaim, StorageError

# KEYS[1] counter, KEYS[2] current hash; ARGV[1] seq. Returns the counter after the call.
# The hash goes only when its partial belongs to a segment up to seq: a replayed commit must not
# drop the partial of a later segment.
_COMMIT_FINAL_LUA = """
local counter = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local seq = tonumber(ARGV[1])
if seq > counter then
  redis.call('SET', KEYS[1], ARGV[1])
  counter = seq
end
local current = tonumber(redis.call('HGET', KEYS[2], 'seq') or '')
if current == nil or current <= seq then
  redis.call('DEL', KEYS[2])
end
return counter
"""

# KEYS[1] lease; ARGV[1] holder, ARGV[2] TTL in ms. Returns {1, last released seq} when the caller
# holds the lease now, {0, other holder} when another holder does.
_CLAIM_LUA = """
local value = redis.call('GET', KEYS[1])
local released = '0'
if value then
  local kind, rest = string.sub(value, 1, 5), string.sub(value, 6)
  if kind == 'held:' and rest ~= ARGV[1] then
    return {0, rest}
  end
  if kind == 'free:' then
    released = rest
  end
end
redis.call('SET', KEYS[1], 'held:' .. ARGV[1], 'PX', ARGV[2])
return {1, released}
"""

# KEYS[1] lease; ARGV[1] holder, ARGV[2] TTL in ms. Returns 0 only when another holder has it. A
# lapsed or released lease is not taken back (a release may overtake a renewal on its way).
_RENEW_LUA = """
local value = redis.call('GET', KEYS[1])
if value == 'held:' .. ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if value == false or string.sub(value, 1, 5) == 'free:' then
  return 1
end
return 0
"""

# KEYS[1] lease; ARGV[1] holder, ARGV[2] last told seq, ARGV[3] how long to remember it (ms).
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == 'held:' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'free:' .. ARGV[2], 'PX', ARGV[3])
end
return 0
"""

# The caller (the persister) retries with its own spool; a store call gives up after a short while.
_RETRIES = 2
_SOCKET_TIMEOUT_SECONDS = 5.0


def current_key(session_id: SessionId) -> str:
    """The key of the session's current-partial hash."""
    return f"asr:sess:{session_id}:current"


def counter_key(session_id: SessionId) -> str:
    """The key of the session's final counter."""
    return f"asr:sess:{session_id}:seq"


def lease_key(session_id: SessionId) -> str:
    """The key of the session's lease."""
    return f"asr:sess:{session_id}:gateway"


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def unix_seconds(moment: datetime) -> str:
    """A time as the ``ts`` field holds it; a naive time is taken as UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return f"{aware.timestamp():.6f}"


def redacted(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _released_seq(raw: bytes | str) -> int:
    # A value that is not a number (written by hand) says nothing: fall back to the stores.
    try:
        return max(0, int(_text(raw)))
    except ValueError:
        return 0


@contextlib.contextmanager
def _storage_errors(where: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StorageError(f"Redis partial store at {where} failed: {exc}") from exc


class RedisPartialStore:
    """Partials and final counters in Redis (``redis://``, ``rediss://`` or ``unix://``)."""

    def __init__(self, client: Redis, *, ttl_seconds: int, where: str) -> None:
        """Wrap a client; prefer :meth:`from_url`.

        Args:
            client: the Redis client; the store owns it and closes it in :meth:`aclose`.
            ttl_seconds: how long a partial lives after its last write.
            where: the server as error messages name it (no password).
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self._redis = client
        self._ttl = ttl_seconds
        self._where = where
        self._commit_final = client.register_script(_COMMIT_FINAL_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: int) -> RedisPartialStore:
        """Create a store for a Redis URL; nothing connects until the first call."""
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=_RETRIES)
        client = Redis.from_url(
            url,
            retry=retry,
            socket_connect_timeout=_SOCKET_TIMEOUT_SECONDS,
            socket_timeout=_SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
        return cls(client, ttl_seconds=ttl_seconds, where=redacted(url))

    async def put_partial(self, partial: Partial) -> None:
        """Rewrite the session's current hash and restart its TTL, in one round trip."""
        await self.write_batch([partial], {})

    async def write_batch(
        self, partials: Sequence[Partial], commits: Mapping[SessionId, int]
    ) -> None:
        """Put the partials, then commit the finals, in one pipelined round trip (no transaction:
        each command is idempotent, so a batch cut short is simply written again)."""
        with _storage_errors(self._where):
            async with self._redis.pipeline(transaction=False) as pipe:
                for partial in partials:
                    key = current_key(partial.session_id)
                    fields: dict[FieldT, EncodableT] = {
                        "content": partial.text,
                        "seq": str(partial.seq),
                        "ts": unix_seconds(partial.at),
                    }
                    pipe.hset(key, mapping=fields)
                    pipe.expire(key, self._ttl)
                for session_id, seq in commits.items():
                    keys = [counter_key(session_id), current_key(session_id)]
                    await self._commit_final(keys=keys, args=[seq], client=pipe)
                await pipe.execute()

    async def commit_final(self, session_id: SessionId, seq: int) -> None:
        """Raise the counter to ``seq`` (never lower it); drop partials numbered up to ``seq``."""
        keys = [counter_key(session_id), current_key(session_id)]
        with _storage_errors(self._where):
            await self._commit_final(keys=keys, args=[seq])

    async def last_seq(self, session_id: SessionId) -> int:
        """The counter, 0 when the session has none."""
        with _storage_errors(self._where):
            raw = await self._redis.get(counter_key(session_id))
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError as exc:
            raise StorageError(
                f"Redis key {counter_key(session_id)} at {self._where} holds {raw!r}, "
                "not an integer"
            ) from exc

    async def claim_session(
        self, session_id: SessionId, holder: str, *, ttl_seconds: float
    ) -> LeaseClaim:
        """Take the lease unless another holder has it; one round trip."""
        args: list[EncodableT] = [holder, _milliseconds(ttl_seconds)]
        with _storage_errors(self._where):
            granted, detail = await self._claim(keys=[lease_key(session_id)], args=args)
        if granted:
            return LeaseClaim(True, holder, _released_seq(detail))
        return LeaseClaim(False, _text(detail))

    async def renew_sessions(
        self, session_ids: Sequence[SessionId], holder: str, *, ttl_seconds: float
    ) -> list[SessionId]:
        """Extend the leases in one pipelined round trip; return those another holder took."""
        if not session_ids:
            return []
        args: list[EncodableT] = [holder, _milliseconds(ttl_seconds)]
        with _storage_errors(self._where):
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    await self._renew(keys=[lease_key(session_id)], args=args, client=pipe)
                answers = await pipe.execute()
        return [sid for sid, kept in zip(session_ids, answers, strict=True) if not kept]

    async def release_session(
        self, session_id: SessionId, holder: str, *, last_seq: int, keep_seconds: float
    ) -> None:
        """Mark the lease free (if ``holder`` has it) with the last told number."""
        args: list[EncodableT] = [holder, last_seq, _milliseconds(keep_seconds)]
        with _storage_errors(self._where):
            await self._release(keys=[lease_key(session_id)], args=args)

    async def current_partial(self, session_id: SessionId) -> Partial | None:
        """The session's current partial, or None when there is none (or it expired)."""
        with _storage_errors(self._where):
            raw = await self._redis.hgetall(current_key(session_id))
        if not raw:
            return None
        fields = {_text(key): _text(value) for key, value in raw.items()}
        try:
            return Partial(
                session_id=session_id,
                seq=int(fields["seq"]),
                text=fields["content"],
                at=datetime.fromtimestamp(float(fields["ts"]), UTC),
            )
        except (KeyError, ValueError) as exc:
            raise StorageError(
                f"Redis hash {current_key(session_id)} at {self._where} is malformed: {fields!r}"
            ) from exc

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        with _storage_errors(self._where):
            await self._redis.aclose()
