"""/api/usage/authorizations — reserve a call's worst case before it is made, settle it after."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from aihub.core.authorizations import schemas
from aihub.core.authorizations import service as authorizations
from aihub.core.credits import service as credits
from aihub.core.ledger import service as ledger
from aihub.core.rbac.deps import CurrentPrincipal
from aihub.kit.deps import RuntimeDep, TxDep, TxRoute
from aihub.kit.idempotency import IdempotentRequest, idempotent_request

router = APIRouter(prefix="/api/usage/authorizations", tags=["usage"], route_class=TxRoute)
Idem = Annotated[IdempotentRequest, Depends(idempotent_request)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "UNAUTHORIZED / INVALID_TOKEN / INVALID_API_KEY / KEY_EXPIRED"},
    402: {"description": "INSUFFICIENT_CREDITS (details: balance, available, required)"},
    403: {"description": "FORBIDDEN (another user without usage:write) / MODEL_NOT_ALLOWED"},
    404: {"description": "AUTHORIZATION_NOT_FOUND / ACCOUNT_NOT_FOUND"},
    409: {"description": "AUTHORIZATION_NOT_ACTIVE / IDEMPOTENCY_KEY_IN_USE"},
    422: {"description": "VALIDATION_ERROR / UNKNOWN_MODEL / IDEMPOTENCY_KEY_REUSED"},
    429: {"description": "QUOTA_EXCEEDED / KEY_BUDGET_EXCEEDED"},
}


@router.post("", status_code=201, response_model=schemas.AuthorizationOut, responses=_ERRORS)
async def authorize(
    body: schemas.AuthorizationIn, tx: TxDep, runtime: RuntimeDep, actor: CurrentPrincipal, idem: Idem
) -> schemas.AuthorizationOut | Response:
    """Hold the worst-case cost (`maxInputTokens` + `maxOutputTokens` at the current price)
    and reserve it against the key's budget and tokens per minute and the quota, before the
    provider is called. For oneself (a user, or a key for its user) or, with `usage:write`,
    for `userId`. Expires after `ttlSeconds` (default 600) and then releases itself."""
    return await ledger.worked(  # PostgreSQL: the hold and every reservation are one move of a batch
        runtime,
        tx,
        idem,
        actor.id,
        schemas.AuthorizationOut,
        "authorization",
        lambda on: authorizations.authorize(on, runtime, actor, body),
        user_id=body.user_id or actor.user_id,
        policy=tx.info.get(credits.POLICY, credits.NO_ALERTS),
    )


@router.get("/{authorization_id}", response_model=schemas.AuthorizationOut, responses=_ERRORS)
async def read_authorization(
    authorization_id: uuid.UUID, tx: TxDep, actor: CurrentPrincipal
) -> schemas.AuthorizationOut:
    return await authorizations.read(tx, actor, authorization_id)


@router.post("/{authorization_id}/settle", status_code=201, response_model=schemas.SettleOut, responses=_ERRORS)
async def settle(
    authorization_id: uuid.UUID,
    body: schemas.SettleIn,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: CurrentPrincipal,
    idem: Idem,
) -> schemas.SettleOut | Response:
    """Charge the actual cost, never more than held (`overrun: true` when it was capped),
    release the rest, and count the actual usage toward the quota and the key's budget."""
    return await ledger.worked(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.SettleOut,
        "authorization",
        lambda on: authorizations.settle(on, actor, authorization_id, body),
        user_id=await authorizations.owner(tx, authorization_id),
    )


@router.post("/{authorization_id}/cancel", response_model=schemas.AuthorizationOut, responses=_ERRORS)
async def cancel(
    authorization_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, actor: CurrentPrincipal, idem: Idem
) -> schemas.AuthorizationOut | Response:
    """The call was not made: release the hold and every reservation."""
    return await ledger.worked(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.AuthorizationOut,
        "authorization",
        lambda on: authorizations.cancel(on, actor, authorization_id),
        user_id=await authorizations.owner(tx, authorization_id),
        status_code=200,
    )
