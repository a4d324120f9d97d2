"""/api/credits — balances, history and the affordability check.

The money-moving POSTs of /api/credits (grant, deduct, refund, holds) are the ledger engine's:
core/ledger/endpoints.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aihub.core.credits import schemas
from aihub.core.credits import service as credits
from aihub.core.credits.repository import Balance
from aihub.core.rbac.deps import CurrentPrincipal, CurrentUser
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission, TxDep, TxRoute
from aihub.kit.errors import ValidationFailed
from aihub.kit.inputs import Timestamp
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params

router = APIRouter(prefix="/api/credits", tags=["credits"], route_class=TxRoute)

Reader = Annotated[Principal, RequirePermission("credits:read")]
_ACCOUNT = errors(credits.AccountNotFound)
_ERRORS = errors(*credits.REFUSALS)


async def _history(
    tx: TxDep,
    user_id: uuid.UUID,
    page: PageParams,
    reason: schemas.Reason | None,
    from_: dt.datetime | None,
    to: dt.datetime | None,
) -> Paged[schemas.TransactionOut]:
    return await credits.transactions(tx, user_id, page, reason=reason, created_from=from_, created_to=to)


ReasonQ = Annotated[schemas.Reason | None, Query(description="Only transactions with this reason")]
FromQ = Annotated[Timestamp | None, Query(alias="from", description="Inclusive lower bound, RFC 3339")]
ToQ = Annotated[Timestamp | None, Query(description="Exclusive upper bound, RFC 3339")]


@router.get("/balance", response_model=schemas.AccountOut, responses=_ACCOUNT)
async def read_balance(tx: TxDep, me: CurrentUser) -> Balance:
    """The caller's own account: `available` is `balance` minus credits on hold."""
    return await credits.account(tx, me.user_id)


@router.get("/transactions", response_model=schemas.TransactionPage, responses=_ACCOUNT)
async def read_transactions(
    tx: TxDep,
    me: CurrentUser,
    page: Annotated[PageParams, Depends(page_params)],
    reason: ReasonQ = None,
    from_: FromQ = None,
    to: ToQ = None,
) -> Paged[schemas.TransactionOut]:
    """The caller's own ledger, newest first."""
    return await _history(tx, me.user_id, page, reason, from_, to)


@router.get("/accounts/{user_id}", response_model=schemas.AccountOut, responses=_ERRORS)
async def read_account(user_id: uuid.UUID, tx: TxDep, _: Reader) -> Balance:
    """Any user's account (`credits:read`)."""
    return await credits.account(tx, user_id)


@router.get("/accounts/{user_id}/transactions", response_model=schemas.TransactionPage, responses=_ERRORS)
async def read_account_transactions(
    user_id: uuid.UUID,
    tx: TxDep,
    _: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    reason: ReasonQ = None,
    from_: FromQ = None,
    to: ToQ = None,
) -> Paged[schemas.TransactionOut]:
    """Any user's ledger, newest first (`credits:read`)."""
    return await _history(tx, user_id, page, reason, from_, to)


@router.post("/check", response_model=schemas.CheckOut, responses=_ERRORS)
async def check_credits(body: schemas.CheckIn, tx: TxDep, caller: CurrentPrincipal) -> schemas.CheckOut:
    """Whether `amount` credits are available now (advisory: a deduct decides atomically).

    One's own account, or anyone's with `credits:read`.
    """
    if body.user_id is None:
        if caller.user_id is None:
            raise ValidationFailed(details=[{"field": "body.userId", "message": "required for a service"}])
        target = caller.user_id
    else:
        target = body.user_id
    if target != caller.user_id:
        caller.require("credits:read")
    return await credits.check(tx, target, body.amount)
