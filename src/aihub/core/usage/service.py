"""Usage metering: price a reported call, enforce the quota, charge it, keep the record.

One transaction per event: the usage row (claimed first, by its request ID), the quota
counter, the ledger debit and the audit rows commit together or not at all. A replay of a
request ID returns the first outcome without charging again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.pricing import service as pricing
from aihub.core.usage import repository as repo
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.jsonutil import canonical
from aihub.kit.pagination import PageParams, page_of
from aihub.models import Quota, UsageEvent


class QuotaExceeded(AppError):
    status_code, code, message = 429, "QUOTA_EXCEEDED", "This usage would exceed the quota"


class QuotaNotFound(NotFound):
    code, message = "QUOTA_NOT_FOUND", "No quota is set for this scope"


class RequestInProgress(Conflict):
    code, message = "REQUEST_IN_PROGRESS", "A request with this requestId failed meanwhile; retry"


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


def _fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def _result(event: UsageEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "request_id": event.request_id,
        "credits": event.credits,
        "balance": event.balance_after if event.balance_after is not None else 0,
    }


# ---------------------------------------------------------------- quotas


async def quota_for(tx: Tx, user_id: uuid.UUID) -> Quota | None:
    """The user's own quota wins; otherwise that of their highest role that has one."""
    return await repo.quota_of_user(tx.session, user_id)


async def _consume_quota(tx: Tx, user_id: uuid.UUID, charge: int, tokens: int, now: dt.datetime) -> None:
    periods = {kind: period_of(kind, now) for kind in ("day", "month")}
    outcome = await repo.consume_applicable(
        tx.session, user_id, {kind: p.key for kind, p in periods.items()}, charge, tokens
    )
    if outcome is None:
        return
    scope, kind, consumed = outcome
    if not consumed:
        resets = periods[kind].end.isoformat()
        raise QuotaExceeded(details={"scope": scope, "period": kind, "resetsAt": resets})


def check_scope(scope: str) -> str:
    kind, _, value = scope.partition(":")
    if kind == "user":
        try:
            return f"user:{uuid.UUID(value)}"
        except ValueError as exc:
            raise InvalidScope from exc
    if kind == "role" and value and len(value) <= 32:
        return scope
    raise InvalidScope


def quota_view(quota: Quota) -> dict[str, Any]:
    return {
        "scope": quota.scope,
        "period": quota.period,
        "max_credits": quota.max_credits,
        "max_tokens": quota.max_tokens,
        "max_requests": quota.max_requests,
        "created_at": quota.created_at,
        "updated_at": quota.updated_at,
    }


async def get_quota(tx: Tx, scope: str) -> dict[str, Any]:
    quota = await repo.get_quota(tx.session, check_scope(scope))
    if quota is None:
        raise QuotaNotFound
    return quota_view(quota)


async def put_quota(tx: Tx, scope: str, values: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    scope = check_scope(scope)
    quota = await repo.get_quota(tx.session, scope)
    before = quota_view(quota) if quota else None
    if quota is None:
        quota = Quota(scope=scope, **values)
        tx.session.add(quota)
    else:
        for name, value in values.items():
            setattr(quota, name, value)
        quota.updated_at = utcnow()
    await tx.session.flush()
    after = quota_view(quota)
    audit.record(tx, "quota.set", "quota", scope, before=before, after=after)
    return after, before is None


async def delete_quota(tx: Tx, scope: str) -> None:
    quota = await repo.get_quota(tx.session, check_scope(scope))
    if quota is None:
        raise QuotaNotFound
    before = quota_view(quota)
    await tx.session.delete(quota)
    await tx.session.flush()
    audit.record(tx, "quota.delete", "quota", quota.scope, before=before)


async def my_quota(tx: Tx, user_id: uuid.UUID) -> dict[str, Any]:
    quota = await quota_for(tx, user_id)
    if quota is None:
        empty = {"credits": None, "tokens": None, "requests": None}
        return {
            "scope": None,
            "period": None,
            "period_start": None,
            "resets_at": None,
            "limits": empty,
            "used": {"credits": 0, "tokens": 0, "requests": 0},
            "remaining": empty,
        }
    period = period_of(quota.period, utcnow())
    used_c, used_t, used_r = await repo.counter(tx.session, user_id, period.key)

    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else max(0, limit - used)

    return {
        "scope": quota.scope,
        "period": quota.period,
        "period_start": period.start,
        "resets_at": period.end,
        "limits": {"credits": quota.max_credits, "tokens": quota.max_tokens, "requests": quota.max_requests},
        "used": {"credits": used_c, "tokens": used_t, "requests": used_r},
        "remaining": {
            "credits": left(quota.max_credits, used_c),
            "tokens": left(quota.max_tokens, used_t),
            "requests": left(quota.max_requests, used_r),
        },
    }


# ---------------------------------------------------------------- events


async def record_event(tx: Tx, reporter_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Price, quota-check and charge one event. Returns (result, replayed).

    Round trips matter here (the MCP server reports every LLM call): the price, the claim of
    the request ID (one INSERT … ON CONFLICT DO NOTHING), the quota's one conditional upsert,
    the ledger's one statement, and the settle. An unknown user fails the claim's foreign key.
    """
    fingerprint = _fingerprint(body)
    price = await pricing.require_current(tx, body["provider"], body["model"])
    charge = pricing.credits_for(
        price,
        input_tokens=body["input_tokens"],
        output_tokens=body["output_tokens"],
        duration_seconds=body["duration_seconds"] or 0,
    )
    now = utcnow()
    event = {
        "id": uuid.uuid4(),
        "request_id": body["request_id"],
        "request_hash": fingerprint,
        "user_id": body["user_id"],
        "provider": body["provider"],
        "model": body["model"],
        "price_id": price.id,
        "input_tokens": body["input_tokens"],
        "output_tokens": body["output_tokens"],
        "duration_seconds": body["duration_seconds"],
        "credits": charge,
        "reporter_id": reporter_id,
        "metadata": body["metadata"],
        "created_at": now,
    }
    claimed = await repo.claim(tx.session, event)
    if claimed == "unknown_user":
        raise credits.AccountNotFound
    if claimed == "duplicate":
        existing = await repo.by_request_id(tx.session, body["request_id"])
        if existing is None:  # the original rolled back between our insert and this read
            raise RequestInProgress
        if existing.request_hash != fingerprint:
            raise IdempotencyKeyReused("This requestId was reported with different content")
        return _result(existing), True
    user_id, event_id = body["user_id"], event["id"]
    await _consume_quota(tx, user_id, charge, body["input_tokens"] + body["output_tokens"], now)
    if charge > 0:
        txn = await credits.deduct(
            tx,
            user_id,
            charge,
            reason="usage",
            metadata={
                "usageEventId": str(event_id),
                "requestId": body["request_id"],
                "provider": body["provider"],
                "model": body["model"],
            },
        )
        transaction_id, balance = txn["id"], int(txn["balance_after"])
    else:
        account = await credits.account(tx, user_id)  # a free call still tells the balance
        transaction_id, balance = None, int(account["balance"])
    await repo.settle(tx.session, event_id, transaction_id, balance)
    audit.record(
        tx,
        "usage.record",
        "usage_event",
        event_id,
        after={
            "requestId": body["request_id"],
            "userId": str(user_id),
            "provider": body["provider"],
            "model": body["model"],
            "credits": charge,
            "priceId": str(price.id),
        },
    )
    return {"id": event_id, "request_id": body["request_id"], "credits": charge, "balance": balance}, False


def event_view(event: UsageEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "request_id": event.request_id,
        "user_id": event.user_id,
        "provider": event.provider,
        "model": event.model,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "duration_seconds": event.duration_seconds,
        "credits": event.credits,
        "transaction_id": event.transaction_id,
        "metadata": event.meta,
        "created_at": event.created_at,
    }


async def list_events(tx: Tx, params: PageParams, **filters: Any) -> dict[str, Any]:
    rows = await repo.fetch(tx.session, repo.search(params, **filters))
    items, cursor = page_of(rows, params, lambda e: (e.created_at, e.id))
    return {"items": [event_view(e) for e in items], "next_cursor": cursor}


async def summary(tx: Tx, group_by: str, **filters: Any) -> dict[str, Any]:
    return {"group_by": group_by, "items": await repo.summary(tx.session, group_by, **filters)}


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
) -> None:
    """Record usage that was already paid through the ledger (a captured hold): no second debit."""
    price = await pricing.require_current(tx, provider, model)
    event = UsageEvent(
        id=uuid.uuid4(),
        request_id=request_id,
        request_hash=_fingerprint({"requestId": request_id, "settled": True}),
        user_id=user_id,
        provider=provider,
        model=model,
        price_id=price.id,
        input_tokens=0,
        output_tokens=0,
        duration_seconds=duration_seconds,
        credits=charge,
        balance_after=balance,
        transaction_id=transaction_id,
        reporter_id=reporter_id,
        created_at=utcnow(),
    )
    tx.session.add(event)
    await tx.session.flush()
    audit.record(
        tx,
        "usage.record",
        "usage_event",
        event.id,
        after={
            "requestId": request_id,
            "userId": str(user_id),
            "provider": provider,
            "model": model,
            "credits": charge,
            "priceId": str(price.id),
        },
    )
