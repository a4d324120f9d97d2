"""Money moves through the process's ledger engine (PostgreSQL), as HTTP answers.

On the embedded SQLite (one writer anyway) there is no engine: the endpoints keep applying
their move in the request's own transaction (``credits.service``), with the same outcomes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.responses import Response

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.ledger.engine import Act, Claim, LedgerEngine, Move, Outcome, Release, Work, stored_of
from aihub.core.ledger.usage import UsageOp, UsageWriters
from aihub.core.usage import schemas as usage_schemas
from aihub.core.usage import service as usage
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError
from aihub.kit.idempotency import IdempotentRequest, fingerprint, render
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

T = TypeVar("T")

_ENGINE: Slot[LedgerEngine] = Slot("ledger.engine")
_WRITERS_POOL: Slot[AsyncEngine] = Slot("ledger.writers_pool")
_USAGE_POOL: Slot[AsyncEngine] = Slot("ledger.usage_pool")


def _pool(runtime: Runtime, slot: Slot[AsyncEngine], size: int, **server_settings: str) -> AsyncEngine:
    """Writers' own connections (one per writer), apart from the requests' pool: requests
    waiting on a writer may hold every pooled connection, and the writer must still get one."""
    found = runtime.extras.get(slot)
    if found is None:
        found = create_async_engine(
            runtime.engine.url,
            pool_size=size,
            max_overflow=0,
            pool_recycle=1800,
            hide_parameters=True,
            connect_args={"server_settings": {"application_name": "aihub-ledger", **server_settings}},
        )
        runtime.extras.set(slot, found)
        runtime.on_close(found.dispose)  # closed after the writers (closers run newest first)
    return found


def _writers_pool(runtime: Runtime) -> AsyncEngine:
    return _pool(runtime, _WRITERS_POOL, 1)


def _usage_pool(runtime: Runtime) -> AsyncEngine:
    """The usage writers' connections, each planning every statement for its arguments. A
    connection lives for half an hour and prepares each statement once; after five runs
    PostgreSQL may keep one generic plan for it, chosen for the tables as they were then.
    Planned while usage_events was small (a new install, the first minute of a load), the
    replay lookup kept a sequential scan as the table grew: 3.7 ms a batch instead of 0.1
    (measured on the bench). Planning for the arguments costs tens of microseconds a batch."""
    count = runtime.settings.ledger_usage_writers
    return _pool(runtime, _USAGE_POOL, count, plan_cache_mode="force_custom_plan")


W = TypeVar("W", LedgerEngine, UsageWriters)


def _writer(
    runtime: Runtime, key: Slot[W], pool: Callable[[Runtime], AsyncEngine], make: Callable[[AsyncEngine], W]
) -> W | None:
    """The process's writer under ``key`` (created on first use, stopped with the runtime); None
    on SQLite, whose single writer makes the request path already serial."""
    if runtime.settings.is_sqlite:
        return None
    found = runtime.extras.get(key)
    if found is None:
        found = make(pool(runtime))
        runtime.extras.set(key, found)
        runtime.on_close(found.close)
    return found


def engine_of(runtime: Runtime) -> LedgerEngine | None:
    """The process's balance-move engine."""
    return _writer(runtime, _ENGINE, _writers_pool, LedgerEngine)


def claim_of(idem: IdempotentRequest, principal: str) -> Claim | None:
    if idem.key is None:
        return None
    return Claim(principal, idem.key, fingerprint(principal, idem.method, idem.path, idem.body))


async def move(
    engine: LedgerEngine,
    tx: Tx,
    idem: IdempotentRequest,
    principal: str,
    model: type[BaseModel],
    *,
    user_id: uuid.UUID | None,
    amount: int,
    reason: str,
    metadata: dict[str, Any] | None = None,
    related_id: uuid.UUID | None = None,
    policy: credits.Policy = credits.NO_ALERTS,
    status_code: int = 201,
    act: Act | None = None,
) -> object:
    """Apply one move (a signed one, or an ``act`` on holds or a debit) through the engine:
    what it made (an ``Entry``, a ``HoldState``, a Work's result) for the endpoint to return
    through its response model, a replay's stored answer, or its refusal raised."""
    outcome = await engine.submit(
        Move(
            user_id=user_id,
            amount=amount,
            reason=reason,
            render=lambda view: render(model, view),
            status_code=status_code,
            metadata=metadata,
            related_id=related_id,
            actor=tx.info.get(audit.ACTOR, audit.SYSTEM),
            request_id=tx.request_id,
            ip=tx.ip,
            claim=claim_of(idem, principal),
            policy=policy,
            act=act,
        )
    )
    return answer(outcome, idem)


async def moved(
    runtime: Runtime,
    tx: Tx,
    idem: IdempotentRequest,
    principal: str,
    model: type[BaseModel],
    *,
    fallback: Callable[[], Awaitable[T]],
    status_code: int = 201,
    user_id: uuid.UUID | None,
    amount: int = 0,
    reason: str,
    metadata: dict[str, Any] | None = None,
    policy: credits.Policy = credits.NO_ALERTS,
    act: Act | None = None,
) -> T | Response:
    """A money-moving endpoint's answer, under its ``Idempotency-Key`` either way: the move
    through the process's engine (PostgreSQL), or ``fallback`` in the request's own
    transaction where there is none (SQLite, one writer anyway). The engine's move makes what
    ``fallback`` would have (the same service code, or its set-based twin)."""
    engine = engine_of(runtime)
    if engine is None:
        return await idem.respond(tx, principal, status_code, model, fallback)
    made = await move(
        engine,
        tx,
        idem,
        principal,
        model,
        user_id=user_id,
        amount=amount,
        reason=reason,
        metadata=metadata,
        policy=policy,
        status_code=status_code,
        act=act,
    )
    return made if isinstance(made, Response) else cast(T, made)


async def worked(
    runtime: Runtime,
    tx: Tx,
    idem: IdempotentRequest,
    principal: str,
    model: type[BaseModel],
    kind: str,
    run: Callable[[Tx], Awaitable[T]],
    *,
    user_id: uuid.UUID | None,
    status_code: int = 201,
    policy: credits.Policy = credits.NO_ALERTS,
) -> T | Response:
    """A domain's money move (``run``, its own service code) as an idempotent answer: one
    ``Work`` move of the engine's batch, or ``run`` on the request's transaction."""
    return await moved(
        runtime,
        tx,
        idem,
        principal,
        model,
        fallback=lambda: run(tx),
        status_code=status_code,
        user_id=user_id,
        reason=kind,
        policy=policy,
        act=Work(kind, run),
    )


async def run_work(
    runtime: Runtime,
    tx: Tx,
    kind: str,
    run: Callable[[Tx], Awaitable[T]],
    *,
    user_id: uuid.UUID,
    policy: credits.Policy = credits.NO_ALERTS,
) -> T:
    """``work`` when the process has an engine, else ``run`` on the request's transaction."""
    engine = engine_of(runtime)
    if engine is None:
        return await run(tx)
    result: T = await work(engine, tx, kind, run, user_id=user_id, policy=policy)
    return result


async def work(
    engine: LedgerEngine,
    tx: Tx,
    kind: str,
    run: Callable[[Tx], Awaitable[T]],
    *,
    user_id: uuid.UUID | None,
    policy: credits.Policy = credits.NO_ALERTS,
) -> T:
    """A domain's money move without an idempotency key (``Work``) through the engine: its
    result, or its refusal raised. ``user_id``: the account it moves (locked with the batch's)."""
    outcome = await engine.submit(
        Move(
            user_id=user_id,
            amount=0,
            reason=kind,
            render=_no_body,
            actor=tx.info.get(audit.ACTOR, audit.SYSTEM),
            request_id=tx.request_id,
            ip=tx.ip,
            policy=policy,
            act=Work(kind, run),
        )
    )
    if outcome.error is not None:
        raise outcome.error
    assert outcome.view is not None
    return cast(T, outcome.view)  # what ``run`` returned


def answer(outcome: Outcome, idem: IdempotentRequest) -> object:
    """What a move came to, as its endpoint returns it: the stored answer of a replay, else
    what the move made (the endpoint's response model serialises it, as the stored body)."""
    if outcome.error is not None:
        raise outcome.error
    if outcome.replayed:
        return idem.replayed(stored_of(outcome))
    assert outcome.view is not None
    return outcome.view


async def expire_holds(engine: LedgerEngine, runtime: Runtime, *, limit: int) -> tuple[int, int]:
    """The hold sweep through the engine: (overdue holds found, holds expired). Each expiry
    takes the account's lock before the hold's, as every other move of a hold does."""
    tx = runtime.tx()
    try:
        due = await credits_repo.overdue_holds(tx.session, utcnow(), limit)
    finally:
        await tx.close()
    if not due:
        return 0, 0
    ops = [
        Move(user_id=row.user_id, amount=0, reason="hold_expire", render=_no_body, act=Release(row.id, expire=True))
        for row in due
    ]
    outcomes = await engine.submit_many(ops)
    return len(due), sum(1 for outcome in outcomes if outcome.error is None)


def _no_body(view: object) -> bytes:
    return b""  # never stored: the sweep's moves carry no idempotency key


# ---------------------------------------------------------------------- usage events

_USAGE_ENGINE: Slot[UsageWriters] = Slot("ledger.usage_engine")


def usage_engine_of(runtime: Runtime) -> UsageWriters | None:
    """The process's usage-event writers."""
    count = runtime.settings.ledger_usage_writers
    return _writer(runtime, _USAGE_ENGINE, _usage_pool, lambda pool: UsageWriters(pool, count))


def queued(
    tx: Tx, reporter_id: str, body: dict[str, Any], occurred_at: dt.datetime | None, policy: credits.Policy
) -> UsageOp:
    """The event as the writer takes it: the writer prices it (422 UNKNOWN_MODEL and
    COST_OUT_OF_RANGE come back as its outcome), so the request reads nothing itself."""
    return UsageOp(
        request_id=body["request_id"],
        request_hash=usage.event_fingerprint(body, occurred_at),
        user_id=body["user_id"],
        provider=body["provider"],
        model=body["model"],
        input_tokens=body["input_tokens"],
        output_tokens=body["output_tokens"],
        duration_seconds=body["duration_seconds"],
        reporter_id=reporter_id,
        metadata=body["metadata"],
        occurred_at=occurred_at,
        actor=tx.info.get(audit.ACTOR, audit.SYSTEM),
        request=tx.request_id,
        ip=tx.ip,
        policy=policy,
    )


async def record_event(
    engine: UsageWriters, tx: Tx, reporter_id: str, body: dict[str, Any], policy: credits.Policy
) -> tuple[usage.Recorded, bool]:
    """One event through the writer: (result, replayed), or its error raised."""
    op = queued(tx, reporter_id, body, None, policy)
    await tx.release()  # before waiting on the writer; nothing was read, unless authentication did
    outcome = await engine.submit(op)
    if outcome.error is not None:
        raise outcome.error
    return _usage_result(outcome), outcome.replayed


async def record_batch(
    engine: UsageWriters, tx: Tx, reporter_id: str, events: list[dict[str, Any]], policy: credits.Policy
) -> tuple[list[usage_schemas.BatchResult], list[usage.Refusal]]:
    """Every event priced here, then all queued together (they share the writer's batch)."""
    if len(events) > usage.BATCH_MAX:
        raise usage.BatchTooLarge(details={"max": usage.BATCH_MAX, "received": len(events)})
    now = utcnow()
    slots: list[UsageOp | AppError] = []
    bodies: list[dict[str, Any]] = []
    for raw in events:
        body = dict(raw)
        occurred_at = body.pop("occurred_at", None)
        bodies.append(body)
        try:
            usage.check_occurred_at(occurred_at, now)
            slots.append(queued(tx, reporter_id, body, occurred_at, policy))
        except AppError as exc:
            slots.append(exc)
    ops = [slot for slot in slots if isinstance(slot, UsageOp)]
    await tx.release()
    outcomes = iter(await engine.submit_many(ops)) if ops else iter(())
    results: list[usage_schemas.BatchResult] = []
    refused: list[usage.Refusal] = []
    for body, slot in zip(bodies, slots, strict=True):
        if isinstance(slot, AppError):
            results.append(usage.batch_item(body["request_id"], slot.status_code, error=slot))
            continue
        outcome = next(outcomes)
        if outcome.error is not None:
            if isinstance(outcome.error, usage.QuotaExceeded):
                refused.append((body["user_id"], outcome.error))
            results.append(usage.batch_item(body["request_id"], outcome.error.status_code, error=outcome.error))
        else:
            results.append(
                usage.batch_item(body["request_id"], 200 if outcome.replayed else 201, _usage_result(outcome))
            )
    return results, refused


def _usage_result(outcome: Outcome) -> usage.Recorded:
    """What the usage writer made of one event (``ledger.usage``)."""
    assert isinstance(outcome.view, usage.Recorded)
    return outcome.view
