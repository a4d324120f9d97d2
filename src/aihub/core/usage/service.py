"""Usage metering: price a reported call, enforce the quota, charge it, keep the record.

One transaction per event: the usage row (claimed first, by its request ID), the quota
counter, the ledger debit and the audit rows commit together or not at all. A replay of a
request ID returns the first outcome without charging again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.pricing import service as pricing
from aihub.core.usage import limits, rollups, schemas
from aihub.core.usage import repository as repo
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.jsonutil import canonical
from aihub.kit.pagination import Paged, PageParams, page_of
from aihub.models import ModelPrice, QuotaLimit, UsageEvent


class QuotaExceeded(AppError):
    status_code, code, message = 429, "QUOTA_EXCEEDED", "This usage would exceed the quota"


class QuotaNotFound(NotFound):
    code, message = "QUOTA_NOT_FOUND", "No quota is set for this scope"


class RequestInProgress(Conflict):
    code, message = "REQUEST_IN_PROGRESS", "A request with this requestId failed meanwhile; retry"


class BatchTooLarge(AppError):
    status_code, code, message = 413, "BATCH_TOO_LARGE", "A batch holds at most 1,000 events"


class OccurredAtOutOfRange(AppError):
    status_code, code = 422, "OCCURRED_AT_OUT_OF_RANGE"
    message = "occurredAt must be at most 7 days in the past and not in the future"


class InvalidScope(AppError):
    status_code, code, message = 422, "VALIDATION_ERROR", "Scope must be role:<name> or user:<uuid>"


@dataclass(frozen=True, slots=True)
class Period:
    key: str
    start: dt.datetime
    end: dt.datetime


def period_of(kind: str, now: dt.datetime) -> Period:
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(f"d:{start:%Y-%m-%d}", start, start + dt.timedelta(days=1))
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    return Period(f"m:{start:%Y-%m}", start, end)


def _fingerprint(document: Mapping[str, Any]) -> str:
    """The SHA-256 of a request's content (a JSON document), canonical: key order does not count."""
    return hashlib.sha256(canonical(document)).hexdigest()


@dataclass(frozen=True, slots=True)
class Recorded:
    """What an event came to: the usage event, its charge and the balance after it."""

    id: uuid.UUID
    request_id: str
    credits: int
    balance: int


# A batch event refused for its quota, and whose: notified after the batch commits.
Refusal = tuple[uuid.UUID, QuotaExceeded]


def _result(event: UsageEvent) -> Recorded:
    balance = event.balance_after if event.balance_after is not None else 0
    return Recorded(event.id, event.request_id, event.credits, balance)


# ---------------------------------------------------------------- quotas


async def count_call(
    tx: Tx,
    *,
    user_id: uuid.UUID,
    key_id: uuid.UUID | None,
    provider: str,
    model: str,
    credits: int,
    tokens: int,
    now: dt.datetime,
) -> list[limits.Row]:
    """Count one call (or reserve it) toward every counter of its user and key, and refuse it
    (429 QUOTA_EXCEEDED) when any applicable limit is passed. Returns the rows counted."""
    subjects = [limits.user_subject(user_id)] + ([limits.key_subject(key_id)] if key_id else [])
    name = f"{provider}/{model}"
    held = await limits.add(tx.session, subjects, name, now, credits=credits, tokens=tokens, requests=1)
    applying = await limits.applicable(tx.session, user_id, key_id, name)
    watched = [(a.subject, limits.window(a.period, now).key, a.model) for a in applying]
    totals = await limits.totals(tx.session, held, watched) if watched else {}
    passed = limits.first_passed(applying, totals, now)
    if passed is not None:
        details = {
            "scope": passed.scope,
            "period": passed.period,
            "model": passed.model or None,
            "resetsAt": limits.window(passed.period, now).end.isoformat(),
        }
        raise QuotaExceeded(details=details)
    return limits.rows_for(subjects, name, now)


SCOPE_HELP = "Scope must be role:<name>, user:<uuid> or key:<uuid>"


def check_scope(scope: str) -> str:
    kind, _, value = scope.partition(":")
    if kind in ("user", "key"):
        try:
            return f"{kind}:{uuid.UUID(value)}"
        except ValueError as exc:
            raise InvalidScope(SCOPE_HELP) from exc
    if kind == "role" and value and len(value) <= 32:
        return scope
    raise InvalidScope(SCOPE_HELP)


def _quota(scope: str, rows: Sequence[QuotaLimit]) -> schemas.QuotaOut:
    first = rows[0]
    return schemas.QuotaOut(
        scope=scope,
        limits=[schemas.LimitOut.read(r, model=r.model or None) for r in rows],
        # The first limit again, as the single-limit form answered before limits stacked.
        period=first.period,
        max_credits=first.max_credits,
        max_tokens=first.max_tokens,
        max_requests=first.max_requests,
        created_at=min(r.created_at for r in rows),
        updated_at=max(r.updated_at for r in rows),
    )


async def get_quota(tx: Tx, scope: str) -> schemas.QuotaOut:
    scope = check_scope(scope)
    rows = await repo.quota_limits(tx.session, scope)
    if not rows:
        raise QuotaNotFound
    return _quota(scope, rows)


async def put_quota(tx: Tx, scope: str, values: Sequence[schemas.LimitIn]) -> tuple[schemas.QuotaOut, bool]:
    """Replace every limit of ``scope`` with ``values`` (one or more)."""
    scope = check_scope(scope)
    existing = await repo.quota_limits(tx.session, scope)
    before = _quota(scope, existing) if existing else None
    now = utcnow()
    created_at = min((r.created_at for r in existing), default=now)
    await repo.delete_quota_limits(tx.session, scope)
    rows = [
        QuotaLimit(
            scope=scope,
            position=i,
            period=v.period,
            model=v.model or "",
            max_credits=v.max_credits,
            max_tokens=v.max_tokens,
            max_requests=v.max_requests,
            created_at=created_at,
            updated_at=now,
        )
        for i, v in enumerate(values)
    ]
    tx.session.add_all(rows)
    await tx.session.flush()
    after = _quota(scope, rows)
    audit.record(tx, "quota.set", "quota", scope, before=before.snapshot() if before else None, after=after.snapshot())
    return after, before is None


async def delete_quota(tx: Tx, scope: str) -> None:
    scope = check_scope(scope)
    existing = await repo.quota_limits(tx.session, scope)
    if not existing:
        raise QuotaNotFound
    before = _quota(scope, existing)
    await repo.delete_quota_limits(tx.session, scope)
    audit.record(tx, "quota.delete", "quota", scope, before=before.snapshot())


def _left(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


def _tightness(item: schemas.QuotaItem) -> int:
    left = [v for v in (item.remaining.credits, item.remaining.tokens, item.remaining.requests) if v is not None]
    return min(left) if left else 10**18


async def my_quota(tx: Tx, user_id: uuid.UUID, key_id: uuid.UUID | None = None) -> schemas.MyQuotaOut:
    """Every limit on the caller (and the calling key), with what is used and left and when its
    window resets. The top-level fields repeat the tightest one (least left), as the
    single-limit answer did."""
    now = utcnow()
    applying = await limits.applicable(tx.session, user_id, key_id, None)
    rows = [(a.subject, limits.window(a.period, now).key, a.model) for a in applying]
    counts = await limits.used(tx.session, rows)
    items = []
    for limit, row in zip(applying, rows, strict=True):
        window = limits.window(limit.period, now)
        credits, tokens, requests = counts[row]
        items.append(
            schemas.QuotaItem(
                scope=limit.scope,
                period=limit.period,
                model=limit.model or None,
                period_start=window.start,
                resets_at=window.end,
                limits=schemas.Amounts(credits=limit.max_credits, tokens=limit.max_tokens, requests=limit.max_requests),
                used=schemas.Amounts(credits=credits, tokens=tokens, requests=requests),
                remaining=schemas.Amounts(
                    credits=_left(limit.max_credits, credits),
                    tokens=_left(limit.max_tokens, tokens),
                    requests=_left(limit.max_requests, requests),
                ),
            )
        )
    if not items:
        empty = schemas.Amounts(credits=None, tokens=None, requests=None)
        return schemas.MyQuotaOut(
            scope=None,
            period=None,
            period_start=None,
            resets_at=None,
            limits=empty,
            used=schemas.Amounts(credits=0, tokens=0, requests=0),
            remaining=empty,
            items=[],
        )
    tightest = min(items, key=_tightness)
    return schemas.MyQuotaOut(**dict(tightest), items=items)


# ---------------------------------------------------------------- events


async def record_event(
    tx: Tx, reporter_id: str, body: schemas.UsageEventIn, *, occurred_at: dt.datetime | None = None
) -> tuple[Recorded, bool]:
    """Price, quota-check and charge one event. Returns (result, replayed).

    ``occurred_at`` (a batch's backdated event): the event is stored at that time, so it counts
    toward the quota periods and the report days it occurred in; its ledger row is dated now.

    Round trips matter here (the MCP server reports every LLM call): the price, the claim of
    the request ID (one INSERT … ON CONFLICT DO NOTHING), the quota's one conditional upsert,
    the ledger's one statement, and the settle. An unknown user fails the claim's foreign key.
    """
    # The content as it is hashed and priced (a batch's occurredAt is hashed apart).
    document = body.model_dump(exclude={"occurred_at"})
    fingerprint = event_fingerprint(document, occurred_at)
    price, charge = await price_call(tx, body.provider, body.model, document)
    now = occurred_at or utcnow()
    event_id = uuid.uuid4()
    claimed = await repo.claim(
        tx.session,
        {  # the claim's INSERT parameters
            "id": event_id,
            "request_id": body.request_id,
            "request_hash": fingerprint,
            "user_id": body.user_id,
            "provider": body.provider,
            "model": body.model,
            "price_id": price.id,
            "input_tokens": body.input_tokens,
            "output_tokens": body.output_tokens,
            "duration_seconds": body.duration_seconds,
            "credits": charge,
            "reporter_id": reporter_id,
            "metadata": body.metadata,
            "created_at": now,
        },
    )
    if claimed == "unknown_user":
        raise credits.AccountNotFound
    if claimed == "duplicate":
        existing = await repo.by_request_id(tx.session, body.request_id)
        if existing is None:  # the original rolled back between our insert and this read
            raise RequestInProgress
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReused("This requestId was reported with different content")
        return _result(existing), True
    user_id = body.user_id
    await count_call(
        tx,
        user_id=user_id,
        key_id=None,
        provider=body.provider,
        model=body.model,
        credits=charge,
        tokens=body.input_tokens + body.output_tokens,
        now=now,
    )
    if charge > 0:
        txn = await credits.deduct(
            tx,
            user_id,
            charge,
            reason="usage",
            metadata={
                "usageEventId": str(event_id),
                "requestId": body.request_id,
                "provider": body.provider,
                "model": body.model,
            },
        )
        transaction_id, balance = txn.id, txn.balance_after
    else:
        account = await credits.account(tx, user_id)  # a free call still tells the balance
        transaction_id, balance = None, account.balance
    await repo.settle(tx.session, event_id, transaction_id, balance)
    audit.record(
        tx,
        "usage.record",
        "usage_event",
        event_id,
        after=recorded(body.request_id, user_id, body.provider, body.model, charge, price.id),
    )
    return Recorded(event_id, body.request_id, charge, balance), False


def recorded(
    request_id: str, user_id: uuid.UUID | str, provider: str, model: str, charge: int, price_id: uuid.UUID | str
) -> dict[str, str | int]:
    """A usage event as its ``usage.record`` audit entry keeps it (every path that records one)."""
    return {
        "requestId": request_id,
        "userId": str(user_id),
        "provider": provider,
        "model": model,
        "credits": charge,
        "priceId": str(price_id),
    }


async def price_call(
    tx: Tx,
    provider: str,
    model: str,
    body: dict[str, Any],
    prices: dict[tuple[str, str], ModelPrice] | None = None,
) -> tuple[ModelPrice, int]:
    """The price in force and the credits a call costs (422 UNKNOWN_MODEL, COST_OUT_OF_RANGE):
    the one pricing step of every usage path (events, batches, authorization settles).
    ``prices`` caches a batch's lookups: one read per model, not per event."""
    key = (provider, model)
    price = prices.get(key) if prices is not None else None
    if price is None:
        price = await pricing.require_current(tx, provider, model)
        if prices is not None:
            prices[key] = price
    charge = pricing.credits_for(
        price,
        input_tokens=body["input_tokens"],
        output_tokens=body["output_tokens"],
        duration_seconds=body["duration_seconds"] or 0,
    )
    return price, charge


def event_fingerprint(document: Mapping[str, Any], occurred_at: dt.datetime | None) -> str:
    """An event's content hash (its ``requestId``'s idempotency): the request's content, and
    a batch event's ``occurredAt``."""
    if occurred_at is None:
        return _fingerprint(document)
    return _fingerprint({**document, "occurred_at": occurred_at.isoformat()})


BATCH_MAX = 1000
BACKDATE_MAX = dt.timedelta(days=7)
CLOCK_SKEW = dt.timedelta(seconds=5)  # a reporter's clock slightly ahead is not "the future"


def check_occurred_at(occurred_at: dt.datetime | None, now: dt.datetime) -> None:
    if occurred_at is not None and not now - BACKDATE_MAX <= occurred_at <= now + CLOCK_SKEW:
        raise OccurredAtOutOfRange(details={"earliest": (now - BACKDATE_MAX).isoformat(), "latest": now.isoformat()})


def batch_item(
    request_id: str, status: int, result: Recorded | None = None, error: AppError | None = None
) -> schemas.BatchResult:
    """One entry of a batch's ``results``: what the event came to, or its refusal."""
    if result is not None:
        return schemas.BatchResult(request_id, status, id=result.id, credits=result.credits, balance=result.balance)
    if error is not None:
        return schemas.BatchResult(request_id, status, code=error.code, message=error.message, details=error.details)
    return schemas.BatchResult(request_id, status)


async def record_batch(
    tx: Tx, reporter_id: str, events: Sequence[schemas.UsageBatchEventIn]
) -> tuple[list[schemas.BatchResult], list[Refusal]]:
    """Each event as :func:`record_event` would, independently (a savepoint each), in the order
    given; one transaction for the batch. Returns the per-event results (201 recorded, 200
    replayed, or the error's status and code) and the quota refusals to notify after commit.

    A backdated event landing on a day the daily rollups already cover recomputes that day's
    rollups in the same transaction, so reports read from them count it.
    """
    if len(events) > BATCH_MAX:
        raise BatchTooLarge(details={"max": BATCH_MAX, "received": len(events)})
    now = utcnow()
    results: list[schemas.BatchResult] = []
    refused: list[Refusal] = []
    days: set[dt.date] = set()
    for body in events:
        occurred_at = body.occurred_at
        try:
            check_occurred_at(occurred_at, now)
            async with tx.savepoint():
                result, replayed = await record_event(tx, reporter_id, body, occurred_at=occurred_at)
        except AppError as exc:
            if isinstance(exc, QuotaExceeded):
                refused.append((body.user_id, exc))
            results.append(batch_item(body.request_id, exc.status_code, error=exc))
            continue
        results.append(batch_item(body.request_id, 200 if replayed else 201, result))
        if occurred_at is not None and not replayed:
            days.add(occurred_at.date())
    await _roll_backdated(tx, days)
    return results, refused


async def _roll_backdated(tx: Tx, days: set[dt.date]) -> None:
    if not days:
        return
    mark = await rollups.complete_until(tx.session)
    for day in sorted(d for d in days if mark is not None and d < mark):
        await rollups.recompute_day(tx.session, day)


def event_out(event: UsageEvent) -> schemas.UsageEventOut:
    return schemas.UsageEventOut.read(event, metadata=event.meta)


async def list_events(tx: Tx, params: PageParams, **filters: Any) -> Paged[schemas.UsageEventOut]:
    rows = await repo.fetch(tx.session, repo.search(params, **filters))
    items, cursor = page_of(rows, params, lambda e: (e.created_at, e.id))
    return Paged([event_out(e) for e in items], cursor)


async def summary(tx: Tx, group_by: str, **filters: Any) -> schemas.SummaryOut:
    totals = await repo.summary(tx.session, group_by, **filters)
    return schemas.SummaryOut(group_by=group_by, items=[schemas.SummaryItem.read(row, key=key) for key, row in totals])


async def record_settled(
    tx: Tx,
    *,
    request_id: str,
    user_id: uuid.UUID,
    provider: str,
    model: str,
    duration_seconds: Any,
    charge: int,
    transaction_id: uuid.UUID | None,
    balance: int,
    reporter_id: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    metadata: dict[str, Any] | None = None,
    price: ModelPrice | None = None,
) -> uuid.UUID:
    """Record usage that was already paid through the ledger (a captured hold): no second debit.
    ``price``: the one the charge was computed with (read again when not given). Returns the event's id."""
    if price is None:
        price = await pricing.require_current(tx, provider, model)
    event = UsageEvent(
        id=uuid.uuid4(),
        request_id=request_id,
        request_hash=_fingerprint({"requestId": request_id, "settled": True}),
        user_id=user_id,
        provider=provider,
        model=model,
        price_id=price.id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        duration_seconds=duration_seconds,
        credits=charge,
        balance_after=balance,
        transaction_id=transaction_id,
        reporter_id=reporter_id,
        meta=metadata,
        created_at=utcnow(),
    )
    tx.session.add(event)
    await tx.session.flush()
    audit.record(
        tx,
        "usage.record",
        "usage_event",
        event.id,
        after=recorded(request_id, user_id, provider, model, charge, price.id),
    )
    return event.id
