"""SQL of the daily usage rollups: the nightly upsert, and the reads that combine them with raw rows.

A rollup row sums one UTC day x user x provider x model. ``usage_rollup_state.complete_until``
says up to which day the rollups are complete. Every aggregate over a window is then read
as: rollup rows for the whole days of the window before that mark, plus raw ``usage_events``
for the rest (partial days at the edges, and every day from the mark on: today's live rows).
A day is counted from exactly one source, so the figures equal a raw aggregate.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Date, String, and_, cast, func, literal, or_, select, text, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import as_utc, dialect_of, utc_day, utcnow
from aihub.models import UsageDailyModelRollup, UsageDailyRollup, UsageEvent, UsageRollupState

STATE = "daily"
# pg_advisory_xact_lock(namespace, day): recomputes of one day run one at a time across
# instances, so the last one to commit read the newest rows.
_PG_LOCK_NAMESPACE = 730_522
MEASURES = ("requests", "input_tokens", "output_tokens", "credits")
KEYS = ("day", "user_id", "provider", "model")
MODEL_KEYS = ("day", "provider", "model")


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


# ---------------------------------------------------------------- the job's side


async def complete_until(session: AsyncSession) -> dt.date | None:
    stmt = select(UsageRollupState.complete_until).where(UsageRollupState.name == STATE)
    return (await session.execute(stmt)).scalar_one_or_none()


async def earliest_event(session: AsyncSession) -> dt.datetime | None:
    first = (await session.execute(select(func.min(UsageEvent.created_at)))).scalar_one_or_none()
    if isinstance(first, str):  # SQLite hands an aggregate of a timestamp back as stored text
        first = dt.datetime.fromisoformat(first)
    return as_utc(first)


async def earliest_day(session: AsyncSession) -> dt.date | None:
    first = await earliest_event(session)
    return first.date() if first is not None else None


async def recompute_day(session: AsyncSession, day: dt.date) -> None:
    """Upsert the rollup rows of one day from its raw events (idempotent: same rows, same sums).

    Usage events are never updated or deleted and their ``created_at`` is fixed at ingestion,
    so a (day, user, provider, model) key that had events keeps having them: an upsert needs no
    delete of stale keys.
    """
    dialect = dialect_of(session)
    if dialect == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :day)"), {"ns": _PG_LOCK_NAMESPACE, "day": day.toordinal()}
        )
    for stmt in recompute_statements(dialect, day):
        await session.execute(stmt)


def lock_key(day: dt.date) -> tuple[int, int]:
    """The advisory lock (namespace, day) that serialises recomputes of ``day`` (PostgreSQL)."""
    return (_PG_LOCK_NAMESPACE, day.toordinal())


def recompute_statements(dialect: str, day: dt.date) -> list[Any]:
    """The two upserts of one day's rollups (per user, then all users), run after its lock."""
    start = _midnight(day)
    source = (
        select(
            literal(day, Date()).label("day"),
            UsageEvent.user_id,
            UsageEvent.provider,
            UsageEvent.model,
            func.count().label("requests"),
            func.coalesce(func.sum(UsageEvent.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(UsageEvent.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(UsageEvent.credits), 0).label("credits"),
        )
        .where(UsageEvent.created_at >= start, UsageEvent.created_at < start + dt.timedelta(days=1))
        .group_by(UsageEvent.user_id, UsageEvent.provider, UsageEvent.model)
    )
    # The all-users table, from the day's per-user rows just written (same transaction).
    per_model = (
        select(
            UsageDailyRollup.day,
            UsageDailyRollup.provider,
            UsageDailyRollup.model,
            *(func.sum(getattr(UsageDailyRollup, m)).label(m) for m in MEASURES),
        )
        .where(UsageDailyRollup.day == day)
        .group_by(UsageDailyRollup.day, UsageDailyRollup.provider, UsageDailyRollup.model)
    )
    return [
        _upsert(dialect, UsageDailyRollup, KEYS, source),
        _upsert(dialect, UsageDailyModelRollup, MODEL_KEYS, per_model),
    ]


def _upsert(dialect: str, table: Any, keys: Sequence[str], source: Any) -> Any:
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    stmt = insert.from_select([*keys, *MEASURES], source)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={name: getattr(stmt.excluded, name) for name in MEASURES}
    )


async def advance(session: AsyncSession, until: dt.date) -> None:
    """Move the completeness mark forward to ``until`` (never back: a slower instance may finish last)."""
    insert = (postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert)(UsageRollupState)
    await session.execute(
        insert.values(name=STATE, complete_until=None, updated_at=utcnow()).on_conflict_do_nothing(
            index_elements=["name"]
        )
    )
    await session.execute(
        update(UsageRollupState)
        .where(
            UsageRollupState.name == STATE,
            or_(UsageRollupState.complete_until.is_(None), UsageRollupState.complete_until < until),
        )
        .values(complete_until=until, updated_at=utcnow())
    )


# ---------------------------------------------------------------- the readers' side


@dataclass(frozen=True, slots=True)
class Split:
    """Which part of a window comes from rollups (whole days) and which from raw events."""

    days: tuple[dt.date | None, dt.date] | None  # [first, end) of rollup days; first None: unbounded
    raw: list[tuple[dt.datetime | None, dt.datetime | None]] = field(default_factory=list)


def split(start: dt.datetime | None, end: dt.datetime | None, mark: dt.date | None) -> Split:
    start, end = as_utc(start), as_utc(end)
    if mark is None:
        return Split(None, [(start, end)])
    first: dt.date | None = None
    if start is not None:
        first = start.date() if start == _midnight(start.date()) else start.date() + dt.timedelta(days=1)
    last = mark
    if end is not None:
        last = min(last, end.date())
    if first is not None and first >= last:
        return Split(None, [(start, end)])
    raw: list[tuple[dt.datetime | None, dt.datetime | None]] = []
    if start is not None and first is not None and start < _midnight(first):
        raw.append((start, _midnight(first)))
    if end is None or end > _midnight(last):
        raw.append((_midnight(last), end))
    return Split((first, last), raw)


def _day_text(dialect: str, column: Any) -> Any:
    if dialect == "postgresql":
        return func.to_char(column, "YYYY-MM-DD")
    return cast(column, String())  # SQLite stores a DATE as 'YYYY-MM-DD' text already


def _rollup_key(dialect: str, table: Any, key: str) -> Any:
    column = getattr(table, key)
    return _day_text(dialect, column).label(key) if key == "day" else column.label(key)


def _raw_key(dialect: str, key: str) -> Any:
    if key == "day":
        return utc_day(dialect, UsageEvent.created_at).label(key)
    return getattr(UsageEvent, key).label(key)


def _raw_where(ranges: Sequence[tuple[dt.datetime | None, dt.datetime | None]]) -> Any:
    parts = []
    for lo, hi in ranges:
        bounds = []
        if lo is not None:
            bounds.append(UsageEvent.created_at >= lo)
        if hi is not None:
            bounds.append(UsageEvent.created_at < hi)
        parts.append(and_(*bounds) if bounds else true())
    return or_(*parts)


def _rollup_where(table: Any, days: tuple[dt.date | None, dt.date]) -> list[Any]:
    first, last = days
    conditions = [table.day < last]
    if first is not None:
        conditions.append(table.day >= first)
    return conditions


def _parts(dialect: str, keys: Sequence[str], window: Split, user_id: uuid.UUID | None) -> list[Any]:
    """One SELECT per source, each already grouped by ``keys`` (UNION ALL'ed by the caller)."""
    parts: list[Any] = []
    if window.days is not None:
        # Without a user dimension, the all-users table has the same sums in far fewer rows.
        per_user = user_id is not None or "user_id" in keys
        table: Any = UsageDailyRollup if per_user else UsageDailyModelRollup
        # The same key objects in SELECT and GROUP BY: PostgreSQL matches a grouped expression
        # only when its bind parameters are the same ones.
        rollup_keys: list[Any] = [_rollup_key(dialect, table, k) for k in keys]
        columns = [*rollup_keys, *(func.sum(getattr(table, m)).label(m) for m in MEASURES)]
        stmt = select(*columns).where(*_rollup_where(table, window.days))
        if user_id is not None:
            stmt = stmt.where(UsageDailyRollup.user_id == user_id)
        parts.append(stmt.group_by(*rollup_keys) if keys else stmt)
    if window.raw:
        raw_keys: list[Any] = [_raw_key(dialect, k) for k in keys]
        raw = select(
            *raw_keys,
            func.count().label("requests"),
            func.sum(UsageEvent.input_tokens).label("input_tokens"),
            func.sum(UsageEvent.output_tokens).label("output_tokens"),
            func.sum(UsageEvent.credits).label("credits"),
        ).where(_raw_where(window.raw))
        if user_id is not None:
            raw = raw.where(UsageEvent.user_id == user_id)
        parts.append(raw.group_by(*raw_keys) if keys else raw)
    return parts


@dataclass(frozen=True, slots=True)
class Figures:
    """One group of :func:`aggregate`: the keys it was grouped by (the others None) and its sums."""

    requests: int
    input_tokens: int
    output_tokens: int
    credits: int
    day: str | None = None  # YYYY-MM-DD (UTC)
    user_id: uuid.UUID | None = None
    provider: str | None = None
    model: str | None = None
    groups: int = 0  # with ``top``: how many groups there were before the limit


async def aggregate(
    session: AsyncSession,
    keys: Sequence[str],
    *,
    mark: dt.date | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    user_id: uuid.UUID | None = None,
    top: int | None = None,
) -> list[Figures]:
    """Requests, tokens and credits grouped by ``keys`` (a subset of day, user_id, provider, model).

    Ordered by the keys, or by credits (highest first) and limited to ``top`` rows, each row
    then also telling ``groups``: how many groups there were before the limit (with user_id:
    the active users). Without keys: one row of totals (zeros when nothing matched).
    """
    dialect = dialect_of(session)
    parts = _parts(dialect, keys, split(start, end, mark), user_id)
    both = (parts[0].union_all(*parts[1:]) if len(parts) > 1 else parts[0]).subquery()
    columns: list[Any] = [both.c[k] for k in keys]
    columns += [func.coalesce(func.sum(both.c[m]), 0).label(m) for m in MEASURES]
    stmt = select(*columns)
    if keys:
        stmt = stmt.group_by(*(both.c[k] for k in keys))
    if top is not None:
        stmt = stmt.add_columns(func.count().over().label("groups"))
        stmt = stmt.order_by(func.sum(both.c.credits).desc(), *(both.c[k] for k in keys)).limit(top)
    elif keys:
        stmt = stmt.order_by(*(both.c[k] for k in keys))
    rows = []
    for row in await session.execute(stmt):
        item = dict(row._mapping)
        for m in MEASURES:
            item[m] = int(item[m])
        rows.append(Figures(**item))
    return rows
