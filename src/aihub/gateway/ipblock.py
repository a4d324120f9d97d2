"""Client addresses: who the client is behind trusted proxies, and who is refused.

Static CIDRs come from settings. Dynamic blocks (admin API, automatic bans) live in the shared
store so that every gateway process refuses the same addresses; each process keeps a local
copy, refreshed every couple of seconds, so the per-request check never waits on Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from aihub.kit.jsonutil import dumps, loads
from aihub.kit.store import Store, StoreUnavailable

log = structlog.get_logger("aihub.gateway.ipblock")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BLOCKS_KEY = "gateway:blocked-ips"


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def is_trusted(peer: str | None, trusted: list[Network]) -> bool:
    if not peer or not trusted:
        return False
    address = _parse_ip(peer)
    return address is not None and any(address in net for net in trusted)


def client_ip(peer: str | None, forwarded_for: str | None, trusted: list[Network]) -> str:
    """The peer, unless it is a trusted proxy: then the right-most untrusted X-Forwarded-For hop.

    Walking from the right means a client cannot forge its address by prepending hops: only
    what our own proxies appended is believed.
    """
    if not peer:
        return "unknown"
    if not forwarded_for or not trusted:
        return peer
    if not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        hop_address = _parse_ip(hop)
        if hop_address is None:
            break  # garbage in the chain: stop believing it here
        if not any(hop_address in net for net in trusted):
            return str(hop_address)
    return peer


@dataclass(frozen=True, slots=True)
class Block:
    network: Network
    reason: str
    expires_at: float | None  # epoch seconds; None: until unblocked
    created_at: float

    def view(self) -> dict[str, Any]:
        return {
            "ip": str(self.network),
            "reason": self.reason,
            "expiresAt": rfc3339(self.expires_at),
            "createdAt": rfc3339(self.created_at),
        }


def rfc3339(epoch: float | None) -> str | None:
    """The contract's timestamp form (RFC 3339, UTC, ``Z``); the store keeps epoch seconds."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode(block: Block) -> str:
    return dumps({"reason": block.reason, "expiresAt": block.expires_at, "createdAt": block.created_at}).decode()


def _decode(cidr: str, raw: str) -> Block | None:
    try:
        data = loads(raw)
        return Block(
            ipaddress.ip_network(cidr, strict=False),
            str(data.get("reason") or ""),
            data.get("expiresAt"),
            float(data.get("createdAt") or 0),
        )
    except (ValueError, TypeError, AttributeError):
        return None


class BlockList:
    def __init__(self, store: Store, static: list[Network], *, refresh_seconds: float = 2.0) -> None:
        self.store = store
        self.static = static
        self.refresh_seconds = refresh_seconds
        self._dynamic: dict[str, Block] = {}
        self._task: asyncio.Task[None] | None = None
        redis = getattr(store, "redis", None)
        self._redis: Redis | None = redis if store.kind == "redis" and isinstance(redis, Redis) else None

    # -------------------------------------------------------------- per request
    def blocked(self, ip: str) -> bool:
        if not self.static and not self._dynamic:
            return False
        address = _parse_ip(ip)
        if address is None:
            return False
        if any(address in net for net in self.static):
            return True
        now = time.time()
        return any(
            address in block.network and (block.expires_at is None or block.expires_at > now)
            for block in self._dynamic.values()
        )

    # -------------------------------------------------------------- storage
    async def _load(self) -> dict[str, str]:
        if self._redis is not None:
            try:
                return {str(k): str(v) for k, v in (await self._redis.hgetall(BLOCKS_KEY)).items()}
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(str(exc)) from exc
        raw = await self.store.get(BLOCKS_KEY)
        return {str(k): str(v) for k, v in loads(raw).items()} if raw else {}

    async def _save(self, cidr: str, value: str | None) -> None:
        if self._redis is not None:
            try:
                if value is None:
                    await self._redis.hdel(BLOCKS_KEY, cidr)
                else:
                    await self._redis.hset(BLOCKS_KEY, cidr, value)
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(str(exc)) from exc
            return
        # Memory store: one process, and no await between this read and write yields the loop.
        current = await self._load()
        if value is None:
            current.pop(cidr, None)
        else:
            current[cidr] = value
        await self.store.set(BLOCKS_KEY, dumps(current).decode())

    async def refresh(self) -> None:
        now = time.time()
        fresh: dict[str, Block] = {}
        for cidr, raw in (await self._load()).items():
            block = _decode(cidr, raw)
            if block is None or (block.expires_at is not None and block.expires_at <= now):
                with contextlib.suppress(StoreUnavailable):
                    await self._save(cidr, None)  # expired: tidy the shared list
                continue
            fresh[str(block.network)] = block
        self._dynamic = fresh

    async def add(self, ip: str, *, ttl: float | None, reason: str) -> Block:
        network = ipaddress.ip_network(ip.strip(), strict=False)
        now = time.time()
        block = Block(network, reason, None if ttl is None else now + ttl, now)
        await self._save(str(network), _encode(block))
        self._dynamic[str(network)] = block
        log.warning("ip_blocked", ip=str(network), reason=reason, ttl_seconds=ttl)
        return block

    async def remove(self, ip: str) -> bool:
        network = str(ipaddress.ip_network(ip.strip(), strict=False))
        await self.refresh()
        existed = network in self._dynamic
        await self._save(network, None)
        self._dynamic.pop(network, None)
        if existed:
            log.info("ip_unblocked", ip=network)
        return existed

    async def list(self) -> list[dict[str, Any]]:
        await self.refresh()
        static = [{"ip": str(net), "reason": "static", "expiresAt": None, "createdAt": None} for net in self.static]
        return static + [block.view() for block in self._dynamic.values()]

    # -------------------------------------------------------------- background
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                await self.refresh()
            await asyncio.sleep(self.refresh_seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Strikes:
    """Automatic bans: N rejections of one kind from one address within a window."""

    def __init__(self, store: Store, blocks: BlockList, *, window: int, ban_seconds: int) -> None:
        self.store = store
        self.blocks = blocks
        self.window = window
        self.ban_seconds = ban_seconds

    async def strike(self, kind: str, ip: str, threshold: int) -> None:
        if threshold <= 0 or ip == "unknown":
            return
        try:
            count = await self.store.incr(f"gateway:strikes:{kind}:{ip}", ttl=self.window)
            if count >= threshold:
                await self.blocks.add(ip, ttl=self.ban_seconds, reason=f"automatic: {kind}")
                await self.store.delete(f"gateway:strikes:{kind}:{ip}")
        except StoreUnavailable:
            return  # without the shared store a ban is not worth a per-process guess
