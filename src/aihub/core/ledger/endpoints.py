"""The HTTP edge of every money move that the ledger engine applies: usage events (one or a
batch) and the credit moves (grant, deduct, refund, holds).

These endpoints sit above the domains whose rules they apply (credits, usage, pricing,
notifications) and the engine that applies them, which is why they live here rather than in
``credits/`` or ``usage/``: those domains' services are below the engine (it calls them), so
their own endpoints could not call the engine without an arrow pointing up. Paths, tags and
answers are the credits' and usage's own (docs/api.md).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from aihub.core.credits import schemas as credit_schemas
from aihub.core.credits import service as credits
from aihub.core.credits.repository import Entry, HoldState
from aihub.core.ledger import service as ledger
from aihub.core.ledger.engine import Capture, Hold, Refund, Release
from aihub.core.notifications import jobs as notification_jobs
from aihub.core.pricing import service as pricing
from aihub.core.rbac.service import Principal
from aihub.core.usage import schemas
from aihub.core.usage import service as usage
from aihub.core.users import service as users
from aihub.kit.deps import RequirePermission, RuntimeDep, Solved, TxDep, TxRoute, lane
from aihub.kit.fastlane import Lane
from aihub.kit.idempotency import IdempotencyKeyReused, IdempotentRequest, idempotent_request
from aihub.kit.openapi import errors
from aihub.kit.runtime import Runtime

usage_router = APIRouter(prefix="/api/usage", tags=["usage"], route_class=TxRoute)
# Money-moving POSTs accept ``Idempotency-Key``: a replay within 24 h returns the first
# response without moving money again (see ``aihub.kit.idempotency``).
credits_router = APIRouter(prefix="/api/credits", tags=["credits"], route_class=TxRoute)

Granter = Annotated[Principal, RequirePermission("credits:grant")]
Deducter = Annotated[Principal, RequirePermission("credits:deduct")]
Idem = Annotated[IdempotentRequest, Depends(idempotent_request)]
_REFUSALS = errors(*credits.REFUSALS)


@usage_router.post(
    "/events",
    response_model=schemas.UsageEventResult,
    status_code=201,
    responses=errors(
        usage.QuotaExceeded,
        credits.InsufficientCredits,
        credits.AccountNotFound,
        pricing.UnknownModel,
        pricing.CostOutOfRange,
        IdempotencyKeyReused,
        usage.RequestInProgress,
        users.UserNotFound,
    ),
)
async def record_event(
    body: schemas.UsageEventIn,
    tx: TxDep,
    reporter: Annotated[Principal, RequirePermission("usage:write")],
    response: Response,
    runtime: RuntimeDep,
) -> usage.Recorded:
    """Report one call: it is priced, checked against the quota and charged in one transaction.

    Idempotent on `requestId`: a replay returns the first result (header `Idempotent-Replayed:
    true`) without charging again; the same `requestId` with other content gets 422
    `IDEMPOTENCY_KEY_REUSED`. 402 `INSUFFICIENT_CREDITS`, 422 `UNKNOWN_MODEL`, 429 `QUOTA_EXCEEDED`.
    """
    engine = ledger.usage_engine_of(runtime)
    try:
        if engine is not None:
            policy = notification_jobs.policy(runtime)
            result, replayed = await ledger.record_event(engine, tx, reporter.id, body.model_dump(), policy)
        else:
            result, replayed = await usage.record_event(tx, reporter.id, body)
    except usage.QuotaExceeded as refused:
        await notification_jobs.on_quota_refused(runtime, body.user_id, refused.details or {})
        raise
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result


@usage_router.post(
    "/events/batch",
    response_model=schemas.UsageBatchOut,
    response_model_exclude_none=True,
    responses=errors(usage.BatchTooLarge),
)
async def record_events(
    body: schemas.UsageBatchIn,
    tx: TxDep,
    reporter: Annotated[Principal, RequirePermission("usage:write")],
    runtime: RuntimeDep,
) -> Response:
    """Report up to 1,000 calls at once → 200 `{results}`, one per event in the order given.

    Each event is what `POST /api/usage/events` takes plus an optional `occurredAt` (RFC 3339,
    at most 7 days ago, not in the future: it then counts toward the quota periods and report
    days it occurred in). Events are independent: each has its own `status` (201 recorded,
    200 a replay of its `requestId`'s first result, or the status and `code` of its refusal:
    402 `INSUFFICIENT_CREDITS`, 429 `QUOTA_EXCEEDED`, 422 `UNKNOWN_MODEL`,
    `OCCURRED_AT_OUT_OF_RANGE`, `IDEMPOTENCY_KEY_REUSED`, 404 `ACCOUNT_NOT_FOUND`, …).
    413 `BATCH_TOO_LARGE` over 1,000 events (`PAYLOAD_TOO_LARGE` over the body limit).
    """
    engine = ledger.usage_engine_of(runtime)
    if engine is not None:
        events = body.model_dump()["events"]  # one call for the lot, not one per event
        policy = notification_jobs.policy(runtime)
        results, refused = await ledger.record_batch(engine, tx, reporter.id, events, policy)
    else:
        results, refused = await usage.record_batch(tx, reporter.id, body.events)
    for user_id, error in refused:
        await notification_jobs.on_quota_refused(runtime, user_id, error.details or {})
    return Response(schemas.batch_body(results), media_type="application/json")


def event_lane(runtime: Runtime) -> Lane:
    """``POST /events`` as a fast lane (kit/deps.py ``lane``): the same endpoint function,
    its dependencies solved without FastAPI's per-request machinery."""

    async def call(solved: Solved[Principal]) -> usage.Recorded:
        return await record_event(solved.body, solved.tx, solved.principal, solved.response, solved.runtime)

    return lane(runtime, "POST", "/api/usage/events", permission="usage:write", idempotent=False, call=call)


# ---------------------------------------------------------------------- credit moves


@credits_router.post("/grant", status_code=201, response_model=credit_schemas.TransactionOut, responses=_REFUSALS)
async def grant_credits(
    body: credit_schemas.GrantIn, tx: TxDep, runtime: RuntimeDep, actor: Granter, idem: Idem
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
        credit_schemas.TransactionOut,
        fallback=lambda: credits.grant(
            tx, body.user_id, body.amount, reason=body.reason, note=body.note, metadata=body.metadata
        ),
        user_id=body.user_id,
        amount=body.amount,
        reason=body.reason,
        metadata=meta or None,
    )


@credits_router.post("/deduct", status_code=201, response_model=credit_schemas.TransactionOut, responses=_REFUSALS)
async def deduct_credits(
    body: credit_schemas.DeductIn, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> Entry | Response:
    """Take credits if that many are available (`credits:deduct`) → the debit transaction;
    402 `INSUFFICIENT_CREDITS` otherwise. Never overdraws, whatever the concurrency."""
    policy = notification_jobs.policy(runtime)
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        credit_schemas.TransactionOut,
        fallback=lambda: credits.deduct(
            tx, body.user_id, body.amount, reason=body.reason, metadata=body.metadata, policy=policy
        ),
        user_id=body.user_id,
        amount=-body.amount,
        reason=body.reason,
        metadata=body.metadata,
        policy=policy,
    )


@credits_router.post("/refund", status_code=201, response_model=credit_schemas.TransactionOut, responses=_REFUSALS)
async def refund_credits(
    body: credit_schemas.RefundIn, tx: TxDep, runtime: RuntimeDep, actor: Granter, idem: Idem
) -> Entry | Response:
    """Credit back part (`amount`) or all of what is left of a debit (`credits:grant`);
    409 `REFUND_EXCEEDS_DEBIT` beyond the debit minus earlier refunds."""
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        credit_schemas.TransactionOut,
        fallback=lambda: credits.refund(tx, body.transaction_id, body.amount, note=body.reason),
        user_id=None,
        reason="refund",
        metadata={"note": body.reason} if body.reason else None,
        act=Refund(body.transaction_id, body.amount),
    )


@credits_router.post("/holds", status_code=201, response_model=credit_schemas.HoldOut, responses=_REFUSALS)
async def create_hold(
    body: credit_schemas.HoldIn, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> HoldState | Response:
    """Reserve credits until captured or released (`credits:deduct`); it expires after
    `ttlSeconds` (default from settings) and then releases itself."""
    ttl = body.ttl_seconds or runtime.settings.hold_default_ttl_seconds
    policy = notification_jobs.policy(runtime)
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        credit_schemas.HoldOut,
        fallback=lambda: credits.hold(
            tx, body.user_id, body.amount, reason=body.reason, ttl_seconds=ttl, metadata=body.metadata, policy=policy
        ),
        user_id=body.user_id,
        reason=body.reason,
        metadata=body.metadata,
        policy=policy,
        act=Hold(body.amount, ttl),
    )


@credits_router.post(
    "/holds/{hold_id}/capture", status_code=201, response_model=credit_schemas.TransactionOut, responses=_REFUSALS
)
async def capture_hold(
    hold_id: uuid.UUID,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Deducter,
    idem: Idem,
    body: credit_schemas.CaptureIn | None = None,
) -> Entry | Response:
    """Charge `amount` (default: all) of an active hold, release the rest → the debit
    transaction (reason `hold_capture`); 409 `HOLD_NOT_ACTIVE` once resolved or expired."""
    amount = body.amount if body is not None else None
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        credit_schemas.TransactionOut,
        fallback=lambda: credits.capture(tx, hold_id, amount),
        user_id=None,
        reason="hold_capture",
        act=Capture(hold_id, amount),
    )


@credits_router.post("/holds/{hold_id}/release", response_model=credit_schemas.HoldOut, responses=_REFUSALS)
async def release_hold(
    hold_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, actor: Deducter, idem: Idem
) -> HoldState | Response:
    """Give an active hold's credits back to `available`; 409 `HOLD_NOT_ACTIVE` once resolved."""
    return await ledger.moved(
        runtime,
        tx,
        idem,
        actor.id,
        credit_schemas.HoldOut,
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
