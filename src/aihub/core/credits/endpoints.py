"""/api/credits — balances, history, grants, deductions, refunds and holds.

Money-moving POSTs accept ``Idempotency-Key``: a replay within 24 h returns the first
response without moving money again (see ``aihub.kit.idempotency``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from aihub.core.credits import jobs as credit_jobs
from aihub.core.credits import schemas
from aihub.core.credits import service as credits
from aihub.core.credits.repository import Balance, Entry, HoldState
from aihub.core.ledger import service as ledger
from aihub.core.ledger.engine import Capture, Hold, Refund, Release
from aihub.core.rbac.deps import CurrentPrincipal, CurrentUser
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission, RuntimeDep, Solved, TxDep, TxRoute, lane
from aihub.kit.errors import ValidationFailed
from aihub.kit.fastlane import Lane
from aihub.kit.idempotency import IdempotentRequest, idempotent_request
from aihub.kit.inputs import Timestamp
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params
from aihub.kit.runtime import Runtime

router = APIRouter(prefix="/api/credits", tags=["credits"], route_class=TxRoute)

Reader = Annotated[Principal, RequirePermission("credits:read")]
Granter = Annotated[Principal, RequirePermission("credits:grant")]
Deducter = Annotated[Principal, RequirePermission("credits:deduct")]
Idem = Annotated[IdempotentRequest, Depends(idempotent_request)]
_ACCOUNT = errors(credits.AccountNotFound)
_ERRORS = errors(
    credits.InsufficientCredits,
    credits.AccountNotFound,
    credits.TransactionNotFound,
    credits.HoldNotFound,
    credits.HoldNotActive,
    credits.RefundExceedsDebit,
    credits.NotADebit,
    credits.CaptureExceedsHold,
)


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


@router.post("/grant", status_code=201, response_model=schemas.TransactionOut, responses=_ERRORS)
async def grant_credits(
    body: schemas.GrantIn, tx: TxDep, runtime: RuntimeDep, actor: Granter, idem: Idem
) -> Entry | Response:
    """Add credits to an account (`credits:grant`) → the credit transaction."""
    meta = dict(body.metadata or {})
    if body.note is not None:
        meta["note"] = body.note
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.TransactionOut,
        fallback=lambda: credits.grant(
            tx, body.user_id, body.amount, reason=body.reason, note=body.note, metadata=body.metadata
        ),
        user_id=body.user_id,
        amount=body.amount,
        reason=body.reason,
        metadata=meta or None,
    )


@router.post("/deduct", status_code=201, response_model=schemas.TransactionOut, responses=_ERRORS)
async def deduct_credits(
    body: schemas.DeductIn, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> Entry | Response:
    """Take credits if that many are available (`credits:deduct`) → the debit transaction;
    402 `INSUFFICIENT_CREDITS` otherwise. Never overdraws, whatever the concurrency."""
    policy = credit_jobs.policy(runtime)
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.TransactionOut,
        fallback=lambda: credits.deduct(
            tx, body.user_id, body.amount, reason=body.reason, metadata=body.metadata, policy=policy
        ),
        user_id=body.user_id,
        amount=-body.amount,
        reason=body.reason,
        metadata=body.metadata,
        policy=policy,
    )


@router.post("/refund", status_code=201, response_model=schemas.TransactionOut, responses=_ERRORS)
async def refund_credits(
    body: schemas.RefundIn, tx: TxDep, runtime: RuntimeDep, actor: Granter, idem: Idem
) -> Entry | Response:
    """Credit back part (`amount`) or all of what is left of a debit (`credits:grant`);
    409 `REFUND_EXCEEDS_DEBIT` beyond the debit minus earlier refunds."""
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.TransactionOut,
        fallback=lambda: credits.refund(tx, body.transaction_id, body.amount, note=body.reason),
        user_id=None,
        reason="refund",
        metadata={"note": body.reason} if body.reason else None,
        act=Refund(body.transaction_id, body.amount),
    )


@router.post("/holds", status_code=201, response_model=schemas.HoldOut, responses=_ERRORS)
async def create_hold(
    body: schemas.HoldIn, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> HoldState | Response:
    """Reserve credits until captured or released (`credits:deduct`); it expires after
    `ttlSeconds` (default from settings) and then releases itself."""
    ttl = body.ttl_seconds or runtime.settings.hold_default_ttl_seconds
    policy = credit_jobs.policy(runtime)
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.HoldOut,
        fallback=lambda: credits.hold(
            tx, body.user_id, body.amount, reason=body.reason, ttl_seconds=ttl, metadata=body.metadata, policy=policy
        ),
        user_id=body.user_id,
        reason=body.reason,
        metadata=body.metadata,
        policy=policy,
        act=Hold(body.amount, ttl),
    )


@router.post("/holds/{hold_id}/capture", status_code=201, response_model=schemas.TransactionOut, responses=_ERRORS)
async def capture_hold(
    hold_id: uuid.UUID,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Deducter,
    idem: Idem,
    body: schemas.CaptureIn | None = None,
) -> Entry | Response:
    """Charge `amount` (default: all) of an active hold, release the rest → the debit
    transaction (reason `hold_capture`); 409 `HOLD_NOT_ACTIVE` once resolved or expired."""
    amount = body.amount if body is not None else None
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.TransactionOut,
        fallback=lambda: credits.capture(tx, hold_id, amount),
        user_id=None,
        reason="hold_capture",
        act=Capture(hold_id, amount),
    )


@router.post("/holds/{hold_id}/release", response_model=schemas.HoldOut, responses=_ERRORS)
async def release_hold(
    hold_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> HoldState | Response:
    """Give an active hold's credits back to `available`; 409 `HOLD_NOT_ACTIVE` once resolved."""
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        schemas.HoldOut,
        fallback=lambda: credits.release(tx, hold_id),
        status_code=200,
        user_id=None,
        reason="hold_release",
        act=Release(hold_id),
    )


def deduct_lane(runtime: Runtime) -> Lane:
    """``POST /deduct`` as a fast lane (kit/deps.py ``lane``): the same endpoint function,
    its dependencies solved without FastAPI's per-request machinery."""

    async def call(solved: Solved[Principal]) -> Entry | Response:
        assert solved.idem is not None
        return await deduct_credits(solved.body, solved.tx, solved.runtime, solved.principal, solved.idem)

    return lane(runtime, "POST", "/api/credits/deduct", permission="credits:deduct", idempotent=True, call=call)
