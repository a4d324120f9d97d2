"""The credit domain's job: the periodic reconcile. (The hold-expiry sweep moves holds through
the ledger engine: core/ledger/jobs.py; low-balance alerts are notifications': notifications/jobs.py.)"""

from __future__ import annotations

from typing import Any

import structlog

from aihub.core.credits.reconcile import reconcile
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.credits")
RECONCILE_JOB = "credits.reconcile"


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
    if runtime.settings.ledger_reconcile_interval_seconds > 0:
        return [Periodic(RECONCILE_JOB, runtime.settings.ledger_reconcile_interval_seconds)]
    return []
