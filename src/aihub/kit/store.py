"""Shared short-lived state (caches, counters, blacklists, limits) behind one small interface.

``RedisStore`` in production, so that every instance of every service sees the same state;
``MemoryStore`` on the embedded default, where all services share one process.
Later domains build on these primitives (the gateway adds its own Lua script for the
one-round-trip rate-limit and blacklist decision).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError


class StoreUnavailable(Exception):
    """The shared store cannot be reached; callers decide to fail open or closed."""


class Store(Protocol):
    kind: str

    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str, ttl: float | None = None) -> None: ...
    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool: ...
    async def delete(self, *keys: str) -> int: ...
    async def exists(self, *keys: str) -> bool: ...  # any of them
    async def existing(self, *keys: str) -> frozenset[str]: ...  # which of them, in one round trip
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int: ...
    async def ttl(self, key: str) -> float | None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class MemoryStore:
    """In-process store with lazy expiry. Safe within one event loop (no awaits inside ops)."""

    kind = "memory"

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float | None]] = {}
        self._clock = time.monotonic
        self._ops = 0

    def _alive(self, key: str) -> tuple[str, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= self._clock():
            del self._data[key]
            return None
        return item

    def _sweep(self) -> None:
        # Lazy expiry alone would keep never-read keys forever; sweep now and then.
        self._ops += 1
        if self._ops % 10_000 == 0:
            now = self._clock()
            for key in [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]:
                del self._data[key]

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock() + ttl

    async def get(self, key: str) -> str | None:
        item = self._alive(key)
        return None if item is None else item[0]

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._sweep()
        self._data[key] = (value, self._expiry(ttl))

    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        if self._alive(key) is not None:
            return False
        await self.set(key, value, ttl)
        return True

    async def delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._alive(key) is not None:
                del self._data[key]
                removed += 1
        return removed

    async def exists(self, *keys: str) -> bool:
        return any(self._alive(key) is not None for key in keys)

    async def existing(self, *keys: str) -> frozenset[str]:
        return frozenset(key for key in keys if self._alive(key) is not None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        item = self._alive(key)
        if item is None:
            value, expiry = amount, self._expiry(ttl)
        else:
            value, expiry = int(item[0]) + amount, item[1]
        self._data[key] = (str(value), expiry)
        return value

    async def ttl(self, key: str) -> float | None:
        item = self._alive(key)
        if item is None or item[1] is None:
            return None
        return max(0.0, item[1] - self._clock())

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, *, timeout: float = 2.0, max_connections: int = 64) -> None:
        # Kept so that a component with its own pool (the gateway's limiter) reaches the same Redis.
        self.url = url
        self.timeout = timeout
        # A bounded, blocking pool: a burst of requests queues for a connection instead of
        # opening hundreds of sockets at once (which, on a busy box, is what timed out).
        pool = BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            max_connections=max_connections,
            timeout=timeout,
        )
        self._pool = pool
        self.redis: Redis = Redis(connection_pool=pool)

    async def get(self, key: str) -> str | None:
        try:
            value = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        try:
            await self.redis.set(key, value, px=None if ttl is None else max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        try:
            done = await self.redis.set(key, value, nx=True, px=None if ttl is None else max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return bool(done)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        try:
            return int(await self.redis.delete(*keys))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def exists(self, *keys: str) -> bool:
        """True when any of ``keys`` exists: one round trip for several blacklist entries."""
        if not keys:
            return False
        try:
            return bool(await self.redis.exists(*keys))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def existing(self, *keys: str) -> frozenset[str]:
        """Which of ``keys`` exist, by one MGET: every key asked about this way holds a string
        (what ``set`` writes), and a missing one reads as nil."""
        if not keys:
            return frozenset()
        try:
            values = await self.redis.mget(keys)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return frozenset(key for key, value in zip(keys, values, strict=True) if value is not None)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, amount)
                if ttl is not None:
                    # NX: the window starts with the first increment and is not pushed back.
                    pipe.pexpire(key, max(1, int(ttl * 1000)), nx=True)
                result = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return int(result[0])

    async def ttl(self, key: str) -> float | None:
        try:
            ms = int(await self.redis.pttl(key))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if ms < 0 else ms / 1000

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.redis.aclose()
        await self._pool.disconnect()


class SharedLookups:
    """``exists`` for many concurrent callers in one round trip: natural batching, no timer.

    A caller's keys join the next lookup; when none is under way it starts at once (an idle
    process adds no latency), otherwise it starts the moment the current one has answered,
    with every key queued meanwhile (a busy one pays one round trip for many requests). A
    lookup is always sent after its callers asked, so it sees every key written before
    that: a token revoked before a request arrived is refused, as with a lookup of its own.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[tuple[str, ...], asyncio.Future[bool]]] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None  # referenced, so it is not collected mid-run

    async def exists(self, *keys: str) -> bool:
        """True when any of ``keys`` exists; ``StoreUnavailable`` as ``Store.exists`` raises it."""
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, answer))
        if not self._busy:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    found = await self.store.existing(*dict.fromkeys(key for keys, _ in batch for key in keys))
                except BaseException as exc:  # every caller of the batch gets the store's error
                    failure = exc if isinstance(exc, Exception) else StoreUnavailable("the lookup was cancelled")
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for keys, answer in batch:
                    if not answer.done():
                        answer.set_result(any(key in found for key in keys))
        finally:
            self._busy = False
            self._task = None


async def over_limit(store: Store, key: str, *, limit: int, window_seconds: int) -> int | None:
    """Count one more request on ``key`` in its fixed window: the seconds to wait (≥ 1) once the
    window holds more than ``limit``, else None. Counting comes first, so parallel requests
    cannot all slip under the limit. Raises :class:`StoreUnavailable`: each caller decides
    whether an outage fails open."""
    count = await store.incr(key, ttl=window_seconds)
    if count <= limit:
        return None
    wait = await store.ttl(key)
    return max(1, int(wait if wait is not None else window_seconds))


def create_store(redis_url: str | None) -> Store:
    return RedisStore(redis_url) if redis_url else MemoryStore()
