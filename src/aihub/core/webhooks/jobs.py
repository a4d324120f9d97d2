"""Sending webhook deliveries: the after-commit job, the retry sweep, the HTTP client.

An attempt is: claim the delivery (one conditional UPDATE, committed), POST it signed, then
record the attempt and the outcome (another short transaction). No transaction is open while
the receiver is being waited for. A non-2xx answer, a timeout or a refused connection
schedules the next attempt with exponential back-off until ``AIHUB_WEBHOOK_RETRY_HOURS`` have
passed since the event; then the delivery is marked failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
import uuid
from typing import Any

import aiohttp
import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from aihub.core.webhooks import repository as repo
from aihub.core.webhooks import service as webhooks
from aihub.kit.db import utcnow
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot
from aihub.models import WebhookAttempt

log = structlog.get_logger("aihub.webhooks")
SWEEP_JOB = "webhooks.retry_due"
_CLIENT: Slot[aiohttp.ClientSession] = Slot("webhooks.http")
_LEASE_SLACK = 30.0  # seconds past the timeout before another worker may retry a claimed delivery


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses any non-public address (SSRF, DNS rebinding):
    the check is on the very addresses the connection is made to."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        public = [r for r in results if webhooks.is_public_ip(r["host"])]
        if not public:
            raise OSError(f"{host} resolves only to private addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


def _client(runtime: Runtime) -> aiohttp.ClientSession:
    existing = runtime.extras.get(_CLIENT)
    if existing is None or existing.closed:
        settings = runtime.settings
        resolver = None if webhooks.private_allowed(settings) else PublicOnlyResolver()
        connector = aiohttp.TCPConnector(limit=100, resolver=resolver)
        existing = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
        )
        runtime.extras.set(_CLIENT, existing)
        runtime.on_close(existing.close)
    return existing


async def _post(runtime: Runtime, url: str, hdrs: dict[str, str], body: bytes) -> tuple[int | None, str | None]:
    """(status, None) for an answer, (None, problem) when there was none."""
    if not webhooks.private_allowed(runtime.settings):
        try:
            webhooks.check_url(runtime.settings, url)  # literal addresses never reach the resolver
        except webhooks.InvalidWebhookUrl:
            return None, "refused: private address"
    try:
        # Redirects are not followed: a 3xx is a failed attempt, and a redirect cannot steer
        # the request to an address the URL check never saw.
        async with _client(runtime).post(url, data=body, headers=hdrs, allow_redirects=False) as response:
            await response.read()
            return response.status, None
    except TimeoutError:
        return None, "timeout"
    except (aiohttp.ClientError, OSError) as exc:
        return None, type(exc).__name__[:255]


async def attempt(runtime: Runtime, delivery_id: uuid.UUID) -> bool | None:
    """One attempt at one delivery: True delivered, False failed (retry scheduled or given
    up), None when it was not due or another worker holds it."""
    settings = runtime.settings
    now = utcnow()
    lease = now + dt.timedelta(seconds=settings.webhook_timeout_seconds + _LEASE_SLACK)
    tx = runtime.tx()
    try:
        claimed = await repo.claim(tx.session, delivery_id, now, lease)
        await tx.commit()
    finally:
        await tx.close()
    if claimed is None:
        return None
    body = claimed.payload.encode()
    msg_id = webhooks.webhook_id(delivery_id)
    hdrs = webhooks.headers(claimed.secret, msg_id, int(time.time()), body)
    started = time.perf_counter()
    status, problem = await _post(runtime, claimed.url, hdrs, body)
    elapsed = int((time.perf_counter() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    finished = utcnow()
    number = claimed.attempts
    created = claimed.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    tx = runtime.tx()
    try:
        if not await repo.still_there(tx.session, delivery_id):
            return None  # the endpoint was deleted while this attempt was in flight
        await repo.record_attempt(
            tx.session,
            WebhookAttempt(
                id=uuid.uuid4(),
                delivery_id=delivery_id,
                attempt=number,
                status_code=status,
                error=problem if status is None else (None if ok else f"HTTP {status}"),
                duration_ms=elapsed,
                created_at=finished,
            ),
        )
        if ok:
            await repo.finish(
                tx.session, delivery_id, status="delivered", next_attempt_at=finished, delivered_at=finished
            )
        else:
            retry_at = finished + dt.timedelta(seconds=webhooks.backoff(settings, number))
            give_up = retry_at > created + dt.timedelta(hours=settings.webhook_retry_hours)
            await repo.finish(
                tx.session, delivery_id, status="failed" if give_up else "pending", next_attempt_at=retry_at
            )
        await tx.commit()
    finally:
        await tx.close()
    log.info(
        "webhooks.attempt",
        delivery_id=str(delivery_id),
        attempt=number,
        status=status,
        problem=problem,
        delivered=ok,
    )
    return ok


@job(webhooks.DELIVER_JOB)
async def deliver(runtime: Runtime, payload: dict[str, Any]) -> None:
    """The first attempt, right after the event's transaction committed."""
    await attempt(runtime, uuid.UUID(str(payload["deliveryId"])))


@job(SWEEP_JOB)
async def retry_due(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Attempt every due delivery (retries, and first attempts whose job was lost), a few at
    a time; safe on every instance at once (each attempt claims its delivery first)."""
    limit = int(payload.get("limit", 100))
    tx = runtime.tx()
    try:
        ids = await repo.due(tx.session, utcnow(), limit)
    finally:
        await tx.close()
    gate = asyncio.Semaphore(10)

    async def one(delivery_id: uuid.UUID) -> None:
        async with gate:
            await attempt(runtime, delivery_id)

    await asyncio.gather(*(one(i) for i in ids))


def periodic(runtime: Runtime) -> list[Periodic]:
    interval = runtime.settings.webhook_retry_interval_seconds
    return [Periodic(SWEEP_JOB, interval)] if interval > 0 else []
