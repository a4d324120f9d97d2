"""The ledger's job: the hold-expiry sweep, which releases overdue holds through the engine
like every other move of a hold (on SQLite, in its own transaction per batch)."""

from __future__ import annotations

from typing import Any

import structlog

from aihub.core.credits import service as credits
from aihub.core.credits.metrics import HOLDS_EXPIRED
from aihub.core.ledger import service as ledger
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.credits")
SWEEP_JOB = "credits.expire_holds"  # its name as queued since it existed


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


def periodic(runtime: Runtime) -> list[Periodic]:
    return [Periodic(SWEEP_JOB, runtime.settings.hold_sweep_interval_seconds)]
