"""The low-balance job: one per crossed threshold, queued after the debit's commit.

It writes the ``credits.low_balance`` webhook deliveries (outbox, one transaction) and then
emails the owner when they opted in; SMTP is never waited on inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from typing import Any

import structlog

from aihub.core.credits import service as credits
from aihub.core.notifications import service as notifications
from aihub.core.webhooks import jobs as _webhook_jobs  # noqa: F401  (registers the delivery job)
from aihub.core.webhooks import service as webhooks
from aihub.kit.db import utcnow
from aihub.kit.email import EmailDeliveryError, Mailer, build_mailer
from aihub.kit.jobs import job, jobs_of
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

log = structlog.get_logger("aihub.notifications")
LOW_BALANCE_JOB = "notifications.low_balance"
QUOTA_REACHED_JOB = "notifications.quota_reached"
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
