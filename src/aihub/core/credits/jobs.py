"""The credit domain's jobs: low-balance events (signed webhooks, email, the legacy URL), the
hold-expiry sweep and the periodic reconcile."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import structlog

from aihub.core.credits import service as credits
from aihub.core.credits.metrics import HOLDS_EXPIRED, WEBHOOK_DELIVERIES
from aihub.core.credits.reconcile import reconcile
from aihub.core.ledger import service as ledger
from aihub.core.notifications import jobs as notification_jobs
from aihub.kit.db import Tx
from aihub.kit.jobs import Periodic, job, jobs_of
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

log = structlog.get_logger("aihub.credits")
WEBHOOK_JOB = "credits.low_balance_webhook"
SWEEP_JOB = "credits.expire_holds"
RECONCILE_JOB = "credits.reconcile"
_POLICY: Slot[credits.Policy] = Slot("credits.policy")


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
        crossed = await notification_jobs.on_low_balance(runtime, event)
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


@job(SWEEP_JOB)
async def sweep_expired_holds(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Release overdue holds in batches, each batch its own transaction (commit at the edge)."""
    limit = int(payload.get("limit", 200))
    engine = ledger.engine_of(runtime)
    while engine is not None:  # PostgreSQL: through the ledger engine, like every other move of a hold
        found, count = await ledger.expire_holds(engine, runtime, limit=limit)
        if count:
            HOLDS_EXPIRED.inc(count)
            log.info("credits.holds_expired", count=count)
        if found < limit:
            return
    while True:
        tx = runtime.tx()
        try:
            count = await credits.expire_holds(tx, limit=limit)
            await tx.commit()
        finally:
            await tx.close()
        if count:
            HOLDS_EXPIRED.inc(count)
            log.info("credits.holds_expired", count=count)
        if count < limit:
            return


@job(RECONCILE_JOB)
async def reconcile_ledger(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Refresh the reconcile gauges that /metrics exposes (read-only)."""
    tx = runtime.tx()
    try:
        report = await reconcile(tx)
    finally:
        await tx.close()
    if not report.ok:
        log.error("ledger.reconcile_mismatch", accounts=[str(c.user_id) for c in report.mismatches[:20]])


def periodic(runtime: Runtime) -> list[Periodic]:
    items = [Periodic(SWEEP_JOB, runtime.settings.hold_sweep_interval_seconds)]
    if runtime.settings.ledger_reconcile_interval_seconds > 0:
        items.append(Periodic(RECONCILE_JOB, runtime.settings.ledger_reconcile_interval_seconds))
    return items


def carry_policy(runtime: Runtime, tx: Tx) -> None:
    """What every unit of work of core's requests carries (kit/deps.py ``Access.on_tx``): the
    process's low-balance policy, so that every debit in it (credits, usage, Sora) alerts."""
    tx.info.set(credits.POLICY, policy(runtime))
