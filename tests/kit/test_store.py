"""The store interface, against real Redis and the in-memory implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aihub.kit.store import MemoryStore, RedisStore, Store, StoreUnavailable


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else RedisStore(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


async def test_get_set_delete(store: Store) -> None:
    assert await store.get("k") is None
    await store.set("k", "v")
    assert await store.get("k") == "v"
    assert await store.exists("k")
    assert await store.delete("k", "missing") == 1
    assert not await store.exists("k")


async def test_ttl_expires(store: Store) -> None:
    await store.set("short", "1", ttl=0.05)
    assert await store.get("short") == "1"
    remaining = await store.ttl("short")
    assert remaining is not None and 0 < remaining <= 0.05
    await asyncio.sleep(0.08)
    assert await store.get("short") is None
    await store.set("forever", "1")
    assert await store.ttl("forever") is None


async def test_set_if_absent(store: Store) -> None:
    assert await store.set_if_absent("once", "a", ttl=5)
    assert not await store.set_if_absent("once", "b", ttl=5)
    assert await store.get("once") == "a"


async def test_incr_keeps_first_window(store: Store) -> None:
    assert await store.incr("n", ttl=0.2) == 1
    assert await store.incr("n", 4, ttl=10) == 5  # a later ttl does not push the window back
    remaining = await store.ttl("n")
    assert remaining is not None and remaining <= 0.2
    results = await asyncio.gather(*(store.incr("c") for _ in range(100)))
    assert sorted(results) == list(range(1, 101))


async def test_redis_down_raises_store_unavailable() -> None:
    dead = RedisStore("redis://127.0.0.1:1/0", timeout=0.2)
    assert not await dead.ping()
    with pytest.raises(StoreUnavailable):
        await dead.get("x")
    await dead.close()
