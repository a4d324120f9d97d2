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
from typing import Protocol

import structlog

from aihub.gateway import metrics
from aihub.gateway.redispipe import RedisPipe, RedisReplyError
from aihub.kit.jwt import blacklist_key, family_blacklist_key
from aihub.kit.store import RedisStore, Store, StoreUnavailable

log = structlog.get_logger("aihub.gateway.ratelimit")

# KEYS[1] blacklist key ("" when the caller has no token), KEYS[2] bucket key ("" when unlimited),
# KEYS[3] the token's refresh-family blacklist key ("" when it names no family).
# ARGV[1] limit per window, ARGV[2] window in microseconds.
# Returns {status, remaining, reset_us, retry_us}: status 1 allowed, 0 limited, -1 revoked.
GCRA_LUA = """
if KEYS[1] ~= '' and redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0, 0, 0} end
if KEYS[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then return {-1, 0, 0, 0} end
local limit = tonumber(ARGV[1])
if limit <= 0 or KEYS[2] == '' then return {1, 0, 0, 0} end
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = math.floor(window / limit)
if interval < 1 then interval = 1 end
local tat = tonumber(redis.call('GET', KEYS[2])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if allow_at > now then return {0, 0, tat - now, allow_at - now} end
redis.call('SET', KEYS[2], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - allow_at) / interval)
if remaining > limit - 1 then remaining = limit - 1 end
return {1, remaining, new_tat - now, 0}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int = 0  # 0: unlimited, no headers
    remaining: int = 0
    reset: int = 0  # seconds until the bucket is full again
    retry_after: int = 0
    revoked: bool = False
    unavailable: bool = False  # fail-closed and the shared store is down


ALLOW = Decision(allowed=True)
REVOKED = Decision(allowed=False, revoked=True)
UNAVAILABLE = Decision(allowed=False, unavailable=True)


class Limiter(Protocol):
    @property
    def degraded(self) -> bool: ...
    async def check(self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None) -> Decision: ...
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
    return max(0, math.ceil(micros / 1_000_000))


class RedisLimiter:
    """One Lua round trip per request; a per-process fallback while Redis is away."""

    def __init__(
        self, redis: RedisPipe, *, window_seconds: int, fail_closed: bool, probe_interval: float = 0.5
    ) -> None:
        self.redis = redis
        self.window_us = window_seconds * 1_000_000
        self.fail_closed = fail_closed
        self.probe_interval = probe_interval
        self.local = LocalGcra(window_seconds)
        self._sha = hashlib.sha1(GCRA_LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
        self._down = False
        self._probe: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        return self._down

    async def check(self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None) -> Decision:
        if self._down:
            return self._fallback(key, limit)
        keys = (
            blacklist_key(jti) if jti else "",
            key if key and limit > 0 else "",
            family_blacklist_key(sid) if sid else "",
        )
        try:
            try:
                reply = await self.redis.call("EVALSHA", self._sha, 3, *keys, limit, self.window_us)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # First call on this Redis (or after a restart): send the script itself once.
                reply = await self.redis.call("EVAL", GCRA_LUA, 3, *keys, limit, self.window_us)
            status, remaining, reset_us, retry_us = reply
        except (RedisReplyError, OSError) as exc:
            self._mark_down(exc)
            return self._fallback(key, limit)
        if status == -1:
            return REVOKED
        if limit <= 0 or not key:
            return ALLOW
        if status == 0:
            return Decision(False, limit, 0, _seconds(reset_us), max(1, _seconds(retry_us)))
        return Decision(True, limit, int(remaining), _seconds(reset_us))

    def _fallback(self, key: str | None, limit: int) -> Decision:
        if self.fail_closed:
            return UNAVAILABLE
        # The blacklist cannot be read: fail-open accepts a verified token until Redis is back.
        if limit <= 0 or not key:
            return ALLOW
        return self.local.take(key, limit)

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

    async def check(self, jti: str | None, key: str | None, limit: int, *, sid: str | None = None) -> Decision:
        if jti:
            keys = (blacklist_key(jti), family_blacklist_key(sid)) if sid else (blacklist_key(jti),)
            with contextlib.suppress(StoreUnavailable):
                if await self.store.exists(*keys):
                    return REVOKED
        if limit <= 0 or not key:
            return ALLOW
        return self.local.take(key, limit)

    async def close(self) -> None:
        return None


def create_limiter(store: Store, *, window_seconds: int, fail_closed: bool) -> Limiter:
    if isinstance(store, RedisStore):
        # Its own pipelined connection (redispipe.py): the per-request round trip is the hot path.
        pipe = RedisPipe(store.url, timeout=store.timeout)
        return RedisLimiter(pipe, window_seconds=window_seconds, fail_closed=fail_closed)
    return MemoryLimiter(store, window_seconds=window_seconds)
