"""/api/credits/alerts — an account's low-balance thresholds and email opt-in."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from aihub.core.notifications import jobs as notification_jobs
from aihub.core.notifications import schemas
from aihub.core.notifications import service as notifications
from aihub.core.rbac.deps import CurrentPrincipal
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RuntimeDep, TxDep, TxRoute
from aihub.kit.errors import ValidationFailed

router = APIRouter(prefix="/api/credits/alerts", tags=["credits"], route_class=TxRoute)

UserQ = Annotated[uuid.UUID | None, Query(alias="userId", description="another user's account (needs a permission)")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "UNAUTHORIZED / INVALID_TOKEN / TOKEN_EXPIRED / TOKEN_REVOKED"},
    403: {"description": "FORBIDDEN: another user's account without the permission"},
    404: {"description": "ACCOUNT_NOT_FOUND"},
    422: {"description": "VALIDATION_ERROR"},
}


def _target(caller: Principal, user_id: uuid.UUID | None, permission: str) -> uuid.UUID:
    if user_id is None:
        if caller.user_id is None:
            raise ValidationFailed(details=[{"field": "query.userId", "message": "required for a service"}])
        return caller.user_id
    if user_id != caller.user_id:
        caller.require(permission)
    return user_id


@router.get("", response_model=schemas.AlertsOut, responses=_ERRORS)
async def read_alerts(
    tx: TxDep, runtime: RuntimeDep, caller: CurrentPrincipal, user_id: UserQ = None
) -> schemas.AlertsOut:
    """One's own alert settings, or another user's with `credits:read`. Without settings of its
    own an account follows the global `AIHUB_LOW_BALANCE_THRESHOLD` (`inherited: true`)."""
    target = _target(caller, user_id, "credits:read")
    return await notifications.get_alerts(tx, target, runtime.settings.low_balance_threshold)


@router.put("", response_model=schemas.AlertsOut, responses=_ERRORS)
async def put_alerts(
    body: schemas.AlertsIn, tx: TxDep, runtime: RuntimeDep, caller: CurrentPrincipal, user_id: UserQ = None
) -> schemas.AlertsOut:
    """Set one's own thresholds (or another user's with `credits:grant`): each time the available
    balance (holds count) falls from at or above a threshold to below it, one
    `credits.low_balance` event goes to the webhook endpoints (and an email when `email`); it
    fires again only after the balance has been back at or above it."""
    target = _target(caller, user_id, "credits:grant")
    result = await notifications.put_alerts(tx, target, body.thresholds, body.email)

    async def forget() -> None:
        notification_jobs.forget(runtime, target)

    tx.after_commit(forget)
    return result
