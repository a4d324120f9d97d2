"""Rate limits and the token blacklist, decided together.

With Redis, ONE Lua script checks ``blacklist:{jti}`` and applies a GCRA limit (a sliding
window with no per-request memory) on Redis's own clock, in one round trip: two round trips
cost 40 % of gateway throughput in the prototype, and Redis's clock keeps every gateway
process exact against the same bucket.

When Redis stops answering, each process falls back to its own GCRA in memory (fail-open by
default) and a background probe switches back to Redis as soon as it answers again. The
embedded mode (MemoryStore) uses the same in-memory GCRA and reads the blacklist from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from aihub.gateway import metrics
from aihub.gateway.redispipe import RedisPipe, RedisReplyError, array_head, bulk
from aihub.kit.jwt import blacklist_key, family_blacklist_key
from aihub.kit.store import RedisStore, Store, StoreUnavailable

log = structlog.get_logger("aihub.gateway.ratelimit")

# The value of an API key's user marker (``blacklist:apikey-user:<id>``) for a suspended user;
# any other value (``deleted``) revokes. Written by core (core/apikeys/service.py).
USER_SUSPENDED = "suspended"

# KEYS[1] blacklist key ("" when the caller has no token), KEYS[2] bucket key ("" when unlimited),
# KEYS[3] the token's refresh-family blacklist key ("" when it names no family); for an API key
# its user's revocation marker instead, whose value says why (``suspended`` or ``deleted``).
# ARGV[1] limit per window, ARGV[2] window in microseconds.
# With an API key (4 keys instead of 3): KEYS[4] the key's own bucket ("" when none), ARGV[3] its
# requests per minute. The key's bucket only advances when the request is admitted by both.
# Returns {status, remaining, reset_us, retry_us}: status 1 allowed, 0 limited, -1 revoked,
# -2 limited by the API key's own requests per minute, -3 the API key's user is suspended.
GCRA_LUA = """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0, 0, 0} end
if KEYS[3] ~= '' then
  local why = redis.call('GET', KEYS[3])
  if why == 'suspended' then return {-3, 0, 0, 0} end
  if why then return {-1, 0, 0, 0} end
end
local key_tat, now = nil, nil
if #KEYS > 3 and KEYS[4] ~= '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local kinterval = math.floor(60000000 / tonumber(ARGV[3]))
  if kinterval < 1 then kinterval = 1 end
  local ktat = tonumber(redis.call('GET', KEYS[4])) or now
  if ktat < now then ktat = now end
  key_tat = ktat + kinterval
  local kallow = key_tat - 60000000
  if kallow > now then return {-2, 0, ktat - now, kallow - now} end
end
local function take_key()
  if key_tat then
    redis.call('SET', KEYS[4], string.format('%d', key_tat), 'PX', math.floor((key_tat - now) / 1000) + 1)
  end
end
local limit = tonumber(ARGV[1])
if limit <= 0 or KEYS[2] == '' then take_key() return {1, 0, 0, 0} end
local window = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = math.floor(window / limit)
if interval < 1 then interval = 1 end
local tat = tonumber(redis.call('GET', KEYS[2])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then return {0, 0, tat - now, allow_at - now} end
redis.call('SET', KEYS[2], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
take_key()
local remaining = math.floor((now - allow_at) / interval)
if remaining > limit - 1 then remaining = limit - 1 end
return {1, remaining, new_tat - now, 0}
"""


class Decision(NamedTuple):
    """A NamedTuple rather than a frozen dataclass: one is built per request, and a frozen
    dataclass sets each of its eight fields through ``object.__setattr__`` (py-spy: ~1.5 us)."""

    allowed: bool
    limit: int = 0  # 0: unlimited, no headers
    remaining: int = 0
    reset: int = 0  # seconds until the bucket is full again
    retry_after: int = 0
    revoked: bool = False
    unavailable: bool = False  # fail-closed and the shared store is down
    key_limited: bool = False  # the API key's own requests per minute
    suspended: bool = False  # the API key's user is suspended (revoked is set too)


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What an API-key request adds to the same round trip: its user's revocation marker and
    the key's own per-minute bucket (per_minute 0: none)."""

    user_marker: str
    bucket: str
    per_minute: int


ALLOW = Decision(allowed=True)
REVOKED = Decision(allowed=False, revoked=True)
SUSPENDED = Decision(allowed=False, revoked=True, suspended=True)
UNAVAILABLE = Decision(allowed=False, unavailable=True)


class Limiter(Protocol):
    @property
    def degraded(self) -> bool: ...
    async def check(
        self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None, api_key: KeyCheck | None = None
    ) -> Decision: ...
    async def close(self) -> None: ...


class LocalGcra:
    """The same GCRA in process memory: the embedded mode and the Redis-down fallback."""

    _MAX_KEYS = 100_000

    def __init__(self, window_seconds: float) -> None:
        self.window = float(window_seconds)
        self._tat: dict[str, float] = {}

    def take(self, key: str, limit: int) -> Decision:
        now = time.monotonic()
        interval = self.window / limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + interval
        allow_at = new_tat - self.window
        if allow_at > now + 1e-9:
            return Decision(False, limit, 0, math.ceil(tat - now), max(1, math.ceil(allow_at - now)))
        if len(self._tat) >= self._MAX_KEYS:
            self._sweep(now)
        self._tat[key] = new_tat
        remaining = min(limit - 1, int((now - allow_at) / interval + 1e-9))
        return Decision(True, limit, remaining, math.ceil(new_tat - now))

    def _sweep(self, now: float) -> None:
        # A bucket whose TAT has passed is full again: forgetting it changes nothing.
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]
        if len(self._tat) >= self._MAX_KEYS:
            self._tat.clear()


def _seconds(micros: int) -> int:
    return (micros + 999_999) // 1_000_000 if micros > 0 else 0  # whole seconds, rounded up


_MAX_COMMANDS = 50_000


class RedisLimiter:
    """One Lua round trip per request; a per-process fallback while Redis is away."""

    def __init__(
        self,
        redis: RedisPipe,
        *,
        window_seconds: int,
        fail_closed: bool,
        probe_interval: float = 0.5,
        workers: int = 1,
    ) -> None:
        self.redis = redis
        self.window_us = window_seconds * 1_000_000
        self.fail_closed = fail_closed
        self.probe_interval = probe_interval
        self.local = LocalGcra(window_seconds)
        self.key_local = LocalGcra(60)
        # While Redis is away each of N workers limits on its own: N x limit/N keeps the sum.
        self.workers = max(1, workers)
        self._sha = hashlib.sha1(GCRA_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        # A caller sends the same command on every request (its keys and limits; the script
        # reads the time itself), so each one is encoded once: RESP encoding was ~4 us a request.
        self._commands: dict[tuple[object, ...], bytes] = {}
        self._down = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self._down

    async def check(
        self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None, api_key: KeyCheck | None = None
    ) -> Decision:
        if self._down:
            return self._fallback(key, limit, api_key)
        cache_key = (jti, key, limit, sid, api_key)
        command = self._commands.get(cache_key)
        if command is None:
            command = self._encode(jti, key, limit, sid, api_key)
        try:
            try:
                reply = await self.redis.send(command)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # First call on this Redis (or after a restart): send the script itself once.
                keys, args = self._keys_and_args(jti, key, limit, sid, api_key)
                reply = await self.redis.call("EVAL", GCRA_LUA, len(keys), *keys, *args)
            status, remaining, reset_us, retry_us = reply
        except (RedisReplyError, OSError) as exc:
            self._mark_down(exc)
            return self._fallback(key, limit, api_key)
        if status == -1:
            return REVOKED
        if status == -3:
            return SUSPENDED
        if status == -2:
            assert api_key is not None
            return Decision(
                False, api_key.per_minute, 0, _seconds(reset_us), max(1, _seconds(retry_us)), key_limited=True
            )
        if limit <= 0 or not key:
            return ALLOW
        if status == 0:
            return Decision(False, limit, 0, _seconds(reset_us), max(1, _seconds(retry_us)))
        return Decision(True, limit, int(remaining), _seconds(reset_us))

    def _keys_and_args(
        self, jti: str | None, key: str | None, limit: int, sid: str | None, api_key: KeyCheck | None
    ) -> tuple[tuple[str, ...], tuple[object, ...]]:
        keys: tuple[str, ...] = (
            blacklist_key(jti) if jti else "",
            key if key and limit > 0 else "",
            family_blacklist_key(sid) if sid else (api_key.user_marker if api_key else ""),
        )
        args: tuple[object, ...] = (limit, self.window_us)
        if api_key is not None and api_key.per_minute > 0:
            keys += (api_key.bucket,)
            args += (api_key.per_minute,)
        return keys, args

    def _encode(self, jti: str | None, key: str | None, limit: int, sid: str | None, api_key: KeyCheck | None) -> bytes:
        keys, args = self._keys_and_args(jti, key, limit, sid, api_key)
        parts = ("EVALSHA", self._sha, len(keys), *keys, *args)
        command = array_head(len(parts)) + b"".join(map(bulk, parts))
        if len(self._commands) >= _MAX_COMMANDS:
            self._commands.clear()  # bounded: a burst of distinct callers starts it over
        self._commands[(jti, key, limit, sid, api_key)] = command
        return command

    def _fallback(self, key: str | None, limit: int, api_key: KeyCheck | None = None) -> Decision:
        if self.fail_closed:
            return UNAVAILABLE
        # The blacklist cannot be read: fail-open accepts a verified token until Redis is back.
        return _local_decision(self.local, self.key_local, key, limit, api_key, self.workers)

    def _mark_down(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        metrics.REDIS_FALLBACK.set(1)
        log.warning("redis_unavailable_fallback", error=str(exc), fail_closed=self.fail_closed)
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                if await self.redis.call("PING") == b"PONG":
                    break
            except (RedisReplyError, OSError):
                continue
        self._down = False
        metrics.REDIS_FALLBACK.set(0)
        log.info("redis_back_shared_limits")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.redis.close()


class MemoryLimiter:
    """Embedded mode: the blacklist lives in the shared in-process store."""

    degraded = False

    def __init__(self, store: Store, *, window_seconds: int) -> None:
        self.store = store
        self.local = LocalGcra(window_seconds)
        self.key_local = LocalGcra(60)

    async def check(
        self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None, api_key: KeyCheck | None = None
    ) -> Decision:
        if jti:
            keys: tuple[str, ...] = (blacklist_key(jti), family_blacklist_key(sid)) if sid else (blacklist_key(jti),)
            with contextlib.suppress(StoreUnavailable):
                if await self.store.exists(*keys):
                    return REVOKED
                if api_key is not None:
                    why = await self.store.get(api_key.user_marker)
                    if why is not None:
                        return SUSPENDED if why == USER_SUSPENDED else REVOKED
        return _local_decision(self.local, self.key_local, key, limit, api_key)

    async def close(self) -> None:
        return None


def _local_decision(
    local: LocalGcra,
    key_local: LocalGcra,
    key: str | None,
    limit: int,
    api_key: KeyCheck | None,
    workers: int = 1,
) -> Decision:
    """In-process limits: the API key's own bucket first, then the caller's. While Redis is away
    each of N workers limits on its own, so each takes limit/N and the sum stays the limit."""
    if api_key is not None and api_key.per_minute > 0:
        own = key_local.take(api_key.bucket, max(1, api_key.per_minute // workers))
        if not own.allowed:
            return Decision(False, own.limit, 0, own.reset, own.retry_after, key_limited=True)
    if limit <= 0 or not key:
        return ALLOW
    return local.take(key, max(1, limit // workers))


def create_limiter(store: Store, *, window_seconds: int, fail_closed: bool, workers: int = 1) -> Limiter:
    if isinstance(store, RedisStore):
        # Its own pipelined connection (redispipe.py): the per-request round trip is the hot path.
        pipe = RedisPipe(store.url, timeout=store.timeout)
        return RedisLimiter(pipe, window_seconds=window_seconds, fail_closed=fail_closed, workers=workers)
    return MemoryLimiter(store, window_seconds=window_seconds)
