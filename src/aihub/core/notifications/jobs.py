"""The low-balance job: one per crossed threshold, queued after the debit's commit.

It writes the ``credits.low_balance`` webhook deliveries (outbox, one transaction) and then
emails the owner when they opted in; SMTP is never waited on inside a transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from aihub.core.credits import service as credits
from aihub.core.notifications import service as notifications
from aihub.core.webhooks import jobs as _webhook_jobs  # noqa: F401  (registers the delivery job)
from aihub.core.webhooks import service as webhooks
from aihub.kit.email import EmailDeliveryError, Mailer, build_mailer
from aihub.kit.jobs import job, jobs_of
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.notifications")
LOW_BALANCE_JOB = "notifications.low_balance"
_MAILER_KEY = "notifications.mailer"
_EMAIL_ATTEMPTS = 3


def mailer(runtime: Runtime) -> Mailer:
    existing = runtime.extras.get(_MAILER_KEY)
    if existing is None:
        existing = build_mailer(runtime.settings)
        runtime.extras[_MAILER_KEY] = existing
    return existing


async def on_low_balance(runtime: Runtime, event: credits.LowBalance) -> list[int]:
    """After commit: find the thresholds crossed, queue one job for each; returns them."""
    tx = runtime.tx()
    try:
        thresholds, wants_email = await notifications.thresholds_of(tx, event)
    finally:
        await tx.close()
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
