"""The store interface, against real Redis and the in-memory implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aihub.kit.store import MemoryStore, RedisStore, SharedLookups, Store, StoreUnavailable


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


async def test_existing_names_the_keys_that_exist(store: Store) -> None:
    await store.set("a", "1")
    await store.set("c", "1", ttl=0.05)
    assert await store.existing("a", "b", "c") == {"a", "c"}
    assert await store.existing() == frozenset()
    await asyncio.sleep(0.08)
    assert await store.existing("a", "b", "c") == {"a"}


class HeldStore(MemoryStore):
    """A memory store whose ``existing`` waits for ``release`` and counts its round trips."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[tuple[str, ...]] = []
        self.release = asyncio.Event()

    async def existing(self, *keys: str) -> frozenset[str]:
        self.lookups.append(keys)
        await self.release.wait()
        return await super().existing(*keys)


async def _settle() -> None:
    """Let every ready task run until it waits (a few loop turns; no clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_shared_lookups_batch_concurrent_callers() -> None:
    store = HeldStore()
    shared = SharedLookups(store)
    await store.set("revoked", "1")
    first = asyncio.create_task(shared.exists("ok-1"))
    await _settle()
    assert store.lookups == [("ok-1",)]  # an idle process asks at once
    # Asked while the first lookup is out: they wait for the next one, together. A key written
    # after the first lookup left is still seen by a caller who asked after the write.
    await store.set("late", "1")
    rest = [asyncio.create_task(shared.exists(*keys)) for keys in [("ok-2", "revoked"), ("late",), ("ok-2",)]]
    await _settle()
    assert len(store.lookups) == 1
    store.release.set()
    assert await first is False
    assert [await task for task in rest] == [True, True, False]
    assert store.lookups == [("ok-1",), ("ok-2", "revoked", "late")]  # one more round trip, keys once


class DownStore(MemoryStore):
    async def existing(self, *keys: str) -> frozenset[str]:
        raise StoreUnavailable("down")


async def test_shared_lookups_pass_the_store_error_to_every_caller() -> None:
    shared = SharedLookups(DownStore())
    results = await asyncio.gather(shared.exists("a"), shared.exists("b"), return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]
    # The next caller is not stuck behind the failed lookup.
    with pytest.raises(StoreUnavailable):
        await shared.exists("c")
