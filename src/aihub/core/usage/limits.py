"""Stacked quotas: every limit of the user's scope, of each of their roles and of the calling
key applies at once, against usage counted since the period began, quota or not.

Every call adds itself to its subject's counters (the user's ``u:<id>`` and the key's
``k:<id>``; per period minute … month; over all models and for its ``provider/model``) in ONE
multi-row upsert that returns the new totals. The upsert takes the counter rows' locks (in a
fixed order) and holds them until the transaction ends, so the totals it returns include every
committed call and no uncommitted one: if any applicable limit is passed, the call is refused
and its transaction rolls back, taking its increments with it. N concurrent calls against a
limit that fits K admit exactly K.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import Tx, utcnow
from aihub.models import QuotaLimit, UsageCounter, UserRole

PERIODS = ("minute", "hour", "day", "week", "month")
ALL_MODELS = ""
# Finished periods are kept this long before the cleanup drops them (a settle may still adjust
# the period its authorization reserved in).
KEEP_AFTER_END = dt.timedelta(days=2)
Row = tuple[str, str, str]  # subject, period key, model


@dataclass(frozen=True, slots=True)
class Window:
    key: str
    start: dt.datetime
    end: dt.datetime


def window(kind: str, now: dt.datetime) -> Window:
    if kind == "minute":
        start = now.replace(second=0, microsecond=0)
        return Window(f"mi:{start:%Y-%m-%dT%H:%M}", start, start + dt.timedelta(minutes=1))
    if kind == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return Window(f"h:{start:%Y-%m-%dT%H}", start, start + dt.timedelta(hours=1))
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return Window(f"d:{day:%Y-%m-%d}", day, day + dt.timedelta(days=1))
    if kind == "week":  # ISO weeks: Monday 00:00 UTC
        start = day - dt.timedelta(days=day.weekday())
        return Window(f"w:{start:%Y-%m-%d}", start, start + dt.timedelta(days=7))
    start = day.replace(day=1)
    return Window(f"mo:{start:%Y-%m}", start, (start + dt.timedelta(days=32)).replace(day=1))


def user_subject(user_id: uuid.UUID) -> str:
    return f"u:{user_id}"


def key_subject(key_id: uuid.UUID) -> str:
    return f"k:{key_id}"


@dataclass(frozen=True, slots=True)
class Applicable:
    scope: str
    period: str
    model: str
    max_credits: int | None
    max_tokens: int | None
    max_requests: int | None
    subject: str


async def applicable(
    session: AsyncSession, user_id: uuid.UUID, key_id: uuid.UUID | None, model: str | None
) -> list[Applicable]:
    """Every limit on this user (own scope and each role's) and key, for all models or ``model``
    (None: every limit, whatever its model)."""
    scopes = [f"user:{user_id}"] + ([f"key:{key_id}"] if key_id else [])
    roles = select(literal("role:") + UserRole.role_name).where(UserRole.user_id == user_id)
    stmt = select(QuotaLimit).where(or_(QuotaLimit.scope.in_(scopes), QuotaLimit.scope.in_(roles)))
    if model is not None:
        stmt = stmt.where(QuotaLimit.model.in_([ALL_MODELS, model]))
    stmt = stmt.order_by(QuotaLimit.scope, QuotaLimit.position)
    found = []
    for limit in (await session.execute(stmt)).scalars().all():
        subject = key_subject(key_id) if key_id and limit.scope == f"key:{key_id}" else user_subject(user_id)
        found.append(
            Applicable(
                limit.scope,
                limit.period,
                limit.model,
                limit.max_credits,
                limit.max_tokens,
                limit.max_requests,
                subject,
            )
        )
    return found


def rows_for(subjects: Sequence[str], model: str, now: dt.datetime) -> list[tuple[Row, dt.datetime]]:
    rows = [
        ((subject, window(kind, now).key, m), window(kind, now).end)
        for subject in subjects
        for kind in PERIODS
        for m in (ALL_MODELS, model)
    ]
    return sorted(rows)  # one lock order for every transaction: no deadlocks between them


async def add(
    session: AsyncSession, rows: list[tuple[Row, dt.datetime]], *, credits: int, tokens: int, requests: int
) -> dict[Row, tuple[int, int, int]]:
    """Add to every row in one statement; the new totals."""
    values = [
        {
            "subject": s,
            "period_key": p,
            "model": m,
            "credits": credits,
            "tokens": tokens,
            "requests": requests,
            "period_end": end,
        }
        for (s, p, m), end in rows
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(UsageCounter).values(values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["subject", "period_key", "model"],
        set_={
            "credits": UsageCounter.credits + stmt.excluded.credits,
            "tokens": UsageCounter.tokens + stmt.excluded.tokens,
            "requests": UsageCounter.requests + stmt.excluded.requests,
        },
    ).returning(
        UsageCounter.subject,
        UsageCounter.period_key,
        UsageCounter.model,
        UsageCounter.credits,
        UsageCounter.tokens,
        UsageCounter.requests,
    )
    result = await session.execute(upsert)
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), int(r[5])) for r in result.all()}


async def adjust(session: AsyncSession, rows: Sequence[Row], *, credits: int, tokens: int, requests: int) -> None:
    """Replace a reservation by the actual usage (or give it back); never below zero."""
    if not rows or (credits == 0 and tokens == 0 and requests == 0):
        return
    for subject, period_key, model in sorted(rows):
        stmt = (
            update(UsageCounter)
            .where(
                UsageCounter.subject == subject,
                UsageCounter.period_key == period_key,
                UsageCounter.model == model,
            )
            .values(
                credits=_floor0(UsageCounter.credits + credits),
                tokens=_floor0(UsageCounter.tokens + tokens),
                requests=_floor0(UsageCounter.requests + requests),
            )
        )
        await session.execute(stmt)


def _floor0(expr: Any) -> Any:
    return case((expr < 0, 0), else_=expr)


def first_passed(
    limits: list[Applicable], totals: dict[Row, tuple[int, int, int]], now: dt.datetime
) -> Applicable | None:
    for limit in limits:
        row = (limit.subject, window(limit.period, now).key, limit.model)
        credits, tokens, requests = totals.get(row, (0, 0, 0))
        if (
            (limit.max_credits is not None and credits > limit.max_credits)
            or (limit.max_tokens is not None and tokens > limit.max_tokens)
            or (limit.max_requests is not None and requests > limit.max_requests)
        ):
            return limit
    return None


async def used(session: AsyncSession, rows: Sequence[Row]) -> dict[Row, tuple[int, int, int]]:
    if not rows:
        return {}
    found: dict[Row, tuple[int, int, int]] = {}
    for subject, period_key, model in set(rows):
        stmt = select(UsageCounter.credits, UsageCounter.tokens, UsageCounter.requests).where(
            UsageCounter.subject == subject, UsageCounter.period_key == period_key, UsageCounter.model == model
        )
        row = (await session.execute(stmt)).first()
        found[(subject, period_key, model)] = (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
    return found


async def purge_finished(tx: Tx, now: dt.datetime | None = None) -> int:
    cutoff = (now or utcnow()) - KEEP_AFTER_END
    result = await tx.session.execute(delete(UsageCounter).where(UsageCounter.period_end < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
