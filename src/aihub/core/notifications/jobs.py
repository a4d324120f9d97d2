"""Low-balance alerts: the process's policy that every debit carries, and the job queued after
the debit's commit, one per crossed threshold.

It writes the ``credits.low_balance`` webhook deliveries (outbox, one transaction) and then
emails the owner when they opted in; SMTP is never waited on inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
import uuid
from typing import Any

import aiohttp
import structlog

from aihub.core.credits import service as credits
from aihub.core.credits.metrics import WEBHOOK_DELIVERIES
from aihub.core.notifications import service as notifications
from aihub.core.webhooks import jobs as _webhook_jobs  # noqa: F401  (registers the delivery job)
from aihub.core.webhooks import service as webhooks
from aihub.kit.db import Tx, utcnow
from aihub.kit.email import EmailDeliveryError, Mailer, build_mailer
from aihub.kit.jobs import job, jobs_of
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

log = structlog.get_logger("aihub.notifications")
LOW_BALANCE_JOB = "notifications.low_balance"
QUOTA_REACHED_JOB = "notifications.quota_reached"
WEBHOOK_JOB = "credits.low_balance_webhook"  # the legacy unsigned URL (its name as queued since it existed)
_POLICY: Slot[credits.Policy] = Slot("credits.policy")
_MAILER: Slot[Mailer] = Slot("notifications.mailer")
_EMAIL_ATTEMPTS = 3


def mailer(runtime: Runtime) -> Mailer:
    existing = runtime.extras.get(_MAILER)
    if existing is None:
        existing = build_mailer(runtime.settings)
        runtime.extras.set(_MAILER, existing)
    return existing


# Each account's thresholds as read last: (expiry on the monotonic clock, thresholds, email).
_CACHE: Slot[dict[uuid.UUID, tuple[float, list[int], bool]]] = Slot("notifications.thresholds")
_CACHE_SECONDS = 30.0
_CACHE_MAX = 10_000


def forget(runtime: Runtime, user_id: uuid.UUID) -> None:
    """Drop this process's cached settings of an account (after a PUT of its alerts)."""
    cache = runtime.extras.get(_CACHE)
    if cache is not None:
        cache.pop(user_id, None)


async def _settings_of(runtime: Runtime, event: credits.LowBalance) -> tuple[list[int], bool]:
    """The account's thresholds and email opt-in, cached briefly per process.

    An account with thresholds of its own makes every debit below its highest threshold a
    candidate; the cache spares those a read each. The UPDATE's ``event.threshold`` (the
    highest, read in the same statement as the money) must match the cached list, so a change
    of the highest threshold on another instance is seen at once; other changes within
    ``_CACHE_SECONDS``.
    """
    cache = runtime.extras.setdefault(_CACHE, {})
    now = time.monotonic()
    hit = cache.get(event.user_id)
    if hit is not None and hit[0] > now and (not event.custom or max(hit[1], default=0) == event.threshold):
        return hit[1], hit[2]
    tx = runtime.tx()
    try:
        thresholds, wants_email = await notifications.thresholds_of(tx, event)
    finally:
        await tx.close()
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[event.user_id] = (now + _CACHE_SECONDS, thresholds, wants_email)
    return thresholds, wants_email


async def on_low_balance(runtime: Runtime, event: credits.LowBalance) -> list[int]:
    """After commit: find the thresholds crossed, queue one job for each; returns them."""
    thresholds, wants_email = await _settings_of(runtime, event)
    crossed = notifications.crossed(thresholds, event.available_before, event.available)
    for threshold in crossed:
        payload = {
            "userId": str(event.user_id),
            "threshold": threshold,
            "available": event.available,
            "balance": event.balance,
            "email": wants_email,
        }
        log.warning("credits.low_balance", **{k: v for k, v in payload.items() if k != "email"})
        try:
            await jobs_of(runtime).enqueue(LOW_BALANCE_JOB, payload)
        except Exception:  # the money moved and committed; a lost notification is only logged
            log.exception("credits.low_balance_enqueue_failed", user_id=payload["userId"])
    return crossed


@job(LOW_BALANCE_JOB)
async def low_balance(runtime: Runtime, payload: dict[str, Any]) -> None:
    user_id = uuid.UUID(str(payload["userId"]))
    data = {k: payload[k] for k in ("userId", "threshold", "available", "balance")}
    tx = runtime.tx()
    try:
        await webhooks.emit(tx, runtime, "credits.low_balance", data)
        to = await notifications.email_of(tx, user_id) if payload.get("email") else None
        await tx.commit()
    finally:
        await tx.close()
    if to is None:
        return
    message = notifications.low_balance_email(to, int(data["threshold"]), int(data["available"]), int(data["balance"]))
    for attempt in range(1, _EMAIL_ATTEMPTS + 1):
        try:
            await mailer(runtime).send(message)
            return
        except EmailDeliveryError as exc:
            log.warning("notifications.email_retry", attempt=attempt, problem=str(exc)[:200])
            if attempt < _EMAIL_ATTEMPTS:
                await asyncio.sleep(runtime.settings.webhook_backoff_seconds * 2 ** (attempt - 1))
    log.error("notifications.email_failed", user_id=str(user_id))


async def on_quota_refused(runtime: Runtime, user_id: uuid.UUID, details: dict[str, Any]) -> None:
    """A usage event was refused by a quota (its transaction rolled back): queue the event.

    Called from the edge after the refusal; the job, not the request, touches the database.
    """
    payload = {"userId": str(user_id), **{k: details.get(k) for k in ("scope", "period", "resetsAt")}}
    try:
        await jobs_of(runtime).enqueue(QUOTA_REACHED_JOB, payload)
    except Exception:  # the refusal stands; a lost notification is only logged
        log.exception("notifications.quota_enqueue_failed", user_id=payload["userId"])


@job(QUOTA_REACHED_JOB)
async def quota_reached(runtime: Runtime, payload: dict[str, Any]) -> None:
    """``usage.quota_reached`` once per user, quota and period: the first refusal of a period
    claims a store key that lives until the period resets; later refusals find it taken."""
    key = (
        f"notifications:quota_reached:{payload['userId']}:{payload['scope']}:{payload['period']}:{payload['resetsAt']}"
    )
    ttl = 86_400.0 * 32
    with contextlib.suppress(ValueError, TypeError):
        ttl = max(60.0, (dt.datetime.fromisoformat(str(payload["resetsAt"])) - utcnow()).total_seconds() + 60)
    if not await runtime.store.set_if_absent(key, "1", ttl=ttl):
        return
    tx = runtime.tx()
    try:
        await webhooks.emit(tx, runtime, "usage.quota_reached", payload)
        await tx.commit()
    finally:
        await tx.close()


# ---------------------------------------------------------------- the low-balance policy


def policy(runtime: Runtime) -> credits.Policy:
    """The process's low-balance policy (built once): the global threshold as the default, and
    the notifier (see ``_notify``)."""
    cached = runtime.extras.get(_POLICY)
    if cached is None:

        async def notify(event: credits.LowBalance) -> None:
            await _notify(runtime, event)

        cached = credits.Policy(runtime.settings.low_balance_threshold, notify)
        runtime.extras.set(_POLICY, cached)
    return cached


async def _notify(runtime: Runtime, event: credits.LowBalance) -> None:
    """Runs after commit: which thresholds were crossed (notifications), one job per crossing
    for the signed webhook endpoints and the email, and the legacy unsigned URL when set."""
    try:
        crossed = await on_low_balance(runtime, event)
    except Exception:  # the money moved and committed; a lost notification is only logged
        log.exception("credits.low_balance_notify_failed", user_id=str(event.user_id))
        return
    if not runtime.settings.low_balance_webhook_url:
        return
    for threshold in crossed:
        payload = {
            "type": "credits.low_balance",
            "userId": str(event.user_id),
            "threshold": threshold,
            "available": event.available,
            "balance": event.balance,
        }
        try:
            await jobs_of(runtime).enqueue(WEBHOOK_JOB, payload)
        except Exception:  # as above: logged, never raised into the request that moved money
            log.exception("credits.low_balance_enqueue_failed", user_id=payload["userId"])


@job(WEBHOOK_JOB)
async def deliver_webhook(runtime: Runtime, payload: dict[str, Any]) -> None:
    """POST the event, retrying failures with exponential back-off and jitter."""
    settings = runtime.settings
    url = settings.low_balance_webhook_url
    if not url:
        return
    timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for attempt in range(1, settings.webhook_max_attempts + 1):
            try:
                async with http.post(url, json=payload) as response:
                    if response.status < 300:
                        WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning("credits.webhook_retry", attempt=attempt, problem=problem)
            if attempt < settings.webhook_max_attempts:
                base = settings.webhook_backoff_seconds * 2 ** (attempt - 1)
                await asyncio.sleep(base + random.uniform(0, base / 2))
    WEBHOOK_DELIVERIES.labels(outcome="failed").inc()
    log.error("credits.webhook_failed", user_id=payload.get("userId"))


def carry_policy(runtime: Runtime, tx: Tx) -> None:
    """What every unit of work of core's requests carries (kit/deps.py ``Access.on_tx``): the
    process's low-balance policy, so that every debit in it (credits, usage, Sora) alerts."""
    tx.info.set(credits.POLICY, policy(runtime))
