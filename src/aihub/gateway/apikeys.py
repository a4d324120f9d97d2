"""API keys at the gateway: ``Authorization: Bearer ahk_…`` or ``X-API-Key: ahk_…``.

The gateway has no database: it asks core (``GET /api/keys/current``, authenticated by the
key itself, on behalf of the client address in ``X-Forwarded-For``: core checks
``allowedIps`` too) who the key is and keeps the answer in a bounded in-process cache for
``AIHUB_GATEWAY_API_KEY_CACHE_SECONDS``, under the key's SHA-256 (never the key). Concurrent
requests with one unknown key from one address wait on one lookup. Revocation does not wait
for the cache: the key's and its user's markers are read in the same Redis round trip as the
rate limit (ratelimit.py), so a revoked key, a suspended user (403 ACCOUNT_SUSPENDED) or a
deleted one stops on the next request at every gateway. Expiry and ``allowedIps`` are checked
here on every request, from the cached record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
import structlog

from aihub.gateway.authcheck import Identity
from aihub.gateway.balancer import Balancer
from aihub.kit.apikeys import InvalidApiKey, KeyExpired, KeyIpNotAllowed, looks_like_key
from aihub.kit.errors import AppError, ServiceUnavailable
from aihub.kit.jsonutil import loads
from aihub.kit.jwt import Claims

log = structlog.get_logger("aihub.gateway.apikeys")

_MAX_KEY_LEN = 200
_RESOLVE_PATH = "/api/keys/current"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    user_id: str
    role: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    expires_at: float | None  # Unix seconds
    networks: tuple[Network, ...] | None
    requests_per_minute: int | None
    fetched: float  # monotonic

    def identity(self) -> Identity:
        claims = Claims(
            sub=self.user_id,
            typ="apikey",
            jti=f"apikey:{self.id}",
            role=self.role,
            roles=self.roles,
            email=None,
            scopes=(),
            iat=0,
            exp=int(self.expires_at) if self.expires_at is not None else None,
            raw={"permissions": list(self.permissions), "requestsPerMinute": self.requests_per_minute},
        )
        return Identity(user_id=self.user_id, role=self.role, jti=claims.jti, claims=claims, api_key_id=self.id)


def _record(body: dict[str, object], now: float) -> KeyRecord:
    expires = body.get("expiresAt")
    ips = body.get("allowedIps")
    rpm = body.get("requestsPerMinute")
    return KeyRecord(
        id=str(body["id"]),
        user_id=str(body["userId"]),
        role=str(body.get("role") or "guest"),
        roles=tuple(str(r) for r in body.get("roles") or ()),  # type: ignore[attr-defined]
        permissions=tuple(str(p) for p in body.get("permissions") or ()),  # type: ignore[attr-defined]
        expires_at=dt.datetime.fromisoformat(str(expires)).timestamp() if expires else None,
        networks=None if ips is None else tuple(ipaddress.ip_network(str(n)) for n in ips),  # type: ignore[attr-defined]
        requests_per_minute=int(rpm) if isinstance(rpm, int) else None,
        fetched=now,
    )


class KeyResolver:
    """Key → record, cached (LRU, bounded) and single-flight per key."""

    def __init__(self, balancer: Balancer, *, ttl: float, timeout: float, max_entries: int = 10_000) -> None:
        self.balancer = balancer
        self.ttl = ttl
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_entries = max_entries
        self._cache: OrderedDict[str, KeyRecord] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[KeyRecord]] = {}

    async def identify(self, session: aiohttp.ClientSession, raw: str, client_ip: str, request_id: str) -> Identity:
        record = await self.resolve(session, raw, request_id, client_ip)
        if record.expires_at is not None and record.expires_at <= time.time():
            raise KeyExpired
        if record.networks is not None and not _ip_in(client_ip, record.networks):
            raise KeyIpNotAllowed
        return record.identity()

    async def resolve(self, session: aiohttp.ClientSession, raw: str, request_id: str, client_ip: str) -> KeyRecord:
        if not looks_like_key(raw) or len(raw) > _MAX_KEY_LEN or not raw.isascii():
            raise InvalidApiKey
        digest = hashlib.sha256(raw.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached.fetched < self.ttl:
            self._cache.move_to_end(digest)
            return cached
        # One lookup per key and client address: core checks the address too (allowedIps), so
        # a caller refused for its address must not hand that refusal to another one.
        flight = f"{digest} {client_ip}"
        pending = self._inflight.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            record = await self._fetch(session, raw, request_id, client_ip)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            self._inflight.pop(flight, None)
        future.set_result(record)
        if self.ttl > 0:
            self._cache[digest] = record
            self._cache.move_to_end(digest)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return record

    async def _fetch(self, session: aiohttp.ClientSession, raw: str, request_id: str, client_ip: str) -> KeyRecord:
        group = self.balancer.groups.get("core")
        instance = group.pick() if group is not None else None
        if instance is None:
            raise ServiceUnavailable("API keys cannot be verified right now")
        # On the client's behalf: core believes X-Forwarded-For from the gateway's address only.
        headers = {"X-API-Key": raw, "X-Request-Id": request_id, "X-Forwarded-For": client_ip}
        try:
            async with session.get(instance.url + _RESOLVE_PATH, headers=headers, timeout=self.timeout) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("apikey_resolve_failed", error=str(exc) or type(exc).__name__, request_id=request_id)
            raise ServiceUnavailable("API keys cannot be verified right now") from exc
        try:
            data = loads(body)
        except ValueError:
            data = None
        if status == 200 and isinstance(data, dict):
            return _record(data, time.monotonic())
        if status in (401, 403) and isinstance(data, dict) and isinstance(data.get("code"), str):
            # Core's own refusal (INVALID_API_KEY, KEY_EXPIRED, ACCOUNT_SUSPENDED…), passed on.
            raise AppError(str(data.get("message") or "Refused"), status_code=status, code=str(data["code"]))
        log.warning("apikey_resolve_unexpected", status=status, request_id=request_id)
        raise ServiceUnavailable("API keys cannot be verified right now")


def _ip_in(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
