"""Background work of authorizations: overdue ones release themselves."""

from __future__ import annotations

from typing import Any

import structlog

from aihub.core.authorizations import service
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.authorizations")
EXPIRE_JOB = "usage.expire_authorizations"
INTERVAL_SECONDS = 15.0


@job(EXPIRE_JOB)
async def expire_authorizations(runtime: Runtime, payload: dict[str, Any]) -> None:
    expired = await service.expire_overdue(runtime)
    if expired:
        log.info("usage.authorizations_expired", count=expired)


def periodic(runtime: Runtime) -> list[Periodic]:
    return [Periodic(EXPIRE_JOB, INTERVAL_SECONDS)]
