"""Background work of the sora domain: generations whose hold ran out are marked expired.

The ledger's own sweep releases the expired holds; this one only keeps the generation's status
truthful. Safe on several instances at once (each pending row moves once, conditionally).
"""

from __future__ import annotations

from typing import Any

import structlog

from aihub.core.sora import service as sora
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.sora")
EXPIRE_JOB = "sora.expire_generations"


@job(EXPIRE_JOB)
async def expire_generations(runtime: Runtime, payload: dict[str, Any]) -> None:
    tx = runtime.tx()
    try:
        count = await sora.expire(tx)
        await tx.commit()
    finally:
        await tx.close()
    if count:
        log.info("sora.generations_expired", count=count)


def periodic(runtime: Runtime) -> list[Periodic]:
    return [Periodic(EXPIRE_JOB, runtime.settings.hold_sweep_interval_seconds)]
