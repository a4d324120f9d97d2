"""Stacked quotas: every limit of the user's scope, of each of their roles and of the calling
key applies at once, against usage counted since the period began, quota or not.

Every call adds itself to its subject's usage (the user's ``u:<id>`` and the key's ``k:<id>``;
over all models and for its ``provider/model``) in ONE multi-row upsert of ``usage_windows``:
one row per subject and model holds the current window of every period (minute … month).
Per period the upsert adds to the row's window when it is the call's, rolls the row to the
call's window when the row's is older (the window it replaces comes back in the row's
``out_`` columns and is kept in ``usage_counters``), and leaves the row alone when the row is
already past the call's window (a writer whose clock is behind, a backdated event): that
period's increment goes to the window's own ``usage_counters`` row instead. A window's total
is therefore the wide row's amounts while its key is that window's, plus its narrow row.

The upsert takes the wide rows' locks (in a fixed order) and holds them until the transaction
ends; every write of a narrow row is made by a transaction holding its wide row (then the
narrow rows, also in a fixed order), so the totals read after the upsert include every
committed call and no uncommitted one: if any applicable limit is passed, the call is refused
and its transaction rolls back, taking its increments with it. N concurrent calls against a
limit that fits K admit exactly K.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, delete, literal, literal_column, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.db import Tx, dialect_of, utcnow
from aihub.models import QuotaLimit, UsageCounter, UserRole
from aihub.models.usage import WINDOW_FIELDS, WINDOW_PERIODS, usage_windows

PERIODS = WINDOW_PERIODS
FIELDS = WINDOW_FIELDS  # credits, tokens, requests: the order of every Amounts
ALL_MODELS = ""
# Finished periods are kept this long before the cleanup drops them (a settle may still adjust
# the period its authorization reserved in).
KEEP_AFTER_END = dt.timedelta(days=2)
Row = tuple[str, str, str]  # subject, period key, model
Amounts = tuple[int, int, int]  # credits, tokens, requests
ZERO: Amounts = (0, 0, 0)


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


def window_of_all(now: dt.datetime) -> dict[str, Window]:
    """The window of every period at ``now``, by period."""
    return {kind: window(kind, now) for kind in PERIODS}


_PREFIXES = {"minute": "mi", "hour": "h", "day": "d", "week": "w", "month": "mo"}
_KINDS = {prefix: kind for kind, prefix in _PREFIXES.items()}
_FORMATS = {"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}


def window_of_key(key: str) -> tuple[str, Window]:
    """The period and window a key names (``window(kind, t).key`` read back)."""
    prefix, _, stamp = key.partition(":")
    kind = _KINDS[prefix]
    return kind, window(kind, dt.datetime.strptime(stamp, _FORMATS[kind]).replace(tzinfo=dt.UTC))


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


def rows_for(subjects: Sequence[str], model: str, now: dt.datetime) -> list[Row]:
    """The windows a call at ``now`` counts toward (what an authorization keeps to settle)."""
    rows = [
        (subject, window(kind, now).key, m) for subject in subjects for kind in PERIODS for m in (ALL_MODELS, model)
    ]
    return sorted(rows)


# ------------------------------------------------------------------ the wide rows' upsert

_W = usage_windows.name


def _upsert_rule() -> dict[str, str]:
    """The DO UPDATE of a ``usage_windows`` upsert, as SQL both engines read (the row by its
    table name, the increment as ``excluded``): per period, add when the windows are the same,
    take the increment's window when the row's is older (and put the replaced one in
    ``out_``), leave it when the row's is newer. CASE, not GREATEST: SQLite has none."""
    rule: dict[str, str] = {}
    for p in PERIODS:
        same, rolls = f"{_W}.{p}_key = excluded.{p}_key", f"{_W}.{p}_key < excluded.{p}_key"
        for f in FIELDS:
            column = f"{p}_{f}"
            rule[column] = (
                f"CASE WHEN {same} THEN {_W}.{column} + excluded.{column}"
                f" WHEN {rolls} THEN excluded.{column} ELSE {_W}.{column} END"
            )
            rule[f"{p}_out_{f}"] = f"CASE WHEN {rolls} THEN {_W}.{column} END"
        rule[f"{p}_key"] = f"CASE WHEN {rolls} THEN excluded.{p}_key ELSE {_W}.{p}_key END"
        rule[f"{p}_out_key"] = f"CASE WHEN {rolls} THEN {_W}.{p}_key END"
    rule["ends_at"] = f"CASE WHEN {_W}.ends_at < excluded.ends_at THEN excluded.ends_at ELSE {_W}.ends_at END"
    return rule


UPSERT_RULE = _upsert_rule()
# What an upsert returns of each row: subject, model, then per period its window (key and
# amounts) and the window it rolled out (NULLs when none): see ``landing``.
_PER_PERIOD = ("key", *FIELDS, "out_key", *(f"out_{f}" for f in FIELDS))
RETURNED = ("subject", "model", *(f"{p}_{c}" for p in PERIODS for c in _PER_PERIOD))


def window_values(subject: str, model: str, windows: Mapping[str, Window], amounts: Amounts) -> dict[str, Any]:
    """A ``usage_windows`` row holding ``amounts`` in each of ``windows`` (one per period)."""
    values: dict[str, Any] = {"subject": subject, "model": model}
    for p in PERIODS:
        values[f"{p}_key"] = windows[p].key
        values.update({f"{p}_{f}": amount for f, amount in zip(FIELDS, amounts, strict=True)})
    values["ends_at"] = max(w.end for w in windows.values())
    return values


@dataclass(slots=True)
class Narrow:
    """Increments bound for ``usage_counters``: (subject, period key, model) → amounts and the
    window's end, summed."""

    rows: dict[Row, tuple[Amounts, dt.datetime]] = field(default_factory=dict)

    def add(self, row: Row, amounts: Amounts, end: dt.datetime) -> None:
        if amounts == ZERO:
            return
        before, _end = self.rows.get(row, (ZERO, end))
        self.rows[row] = (plus(before, amounts), end)

    def sorted(self) -> list[tuple[Row, Amounts, dt.datetime]]:
        """In row order: the narrow rows' lock order."""
        return [(row, amounts, end) for row, (amounts, end) in sorted(self.rows.items())]


def plus(a: Amounts, b: Amounts) -> Amounts:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def landing(
    returned: Sequence[Any],
    windows: Mapping[str, Window],
    amounts: Amounts,
    narrow: Narrow,
    wanted: Container[Row] | None = None,
) -> dict[Row, Amounts]:
    """Read one row an upsert of ``amounts`` in ``windows`` returned (columns ``RETURNED``): the
    windows it now holds, by counter row (only those in ``wanted``, when given: a batch reads
    thousands of rows for the few its limits watch). A period whose key is not ours did not
    take our increment (the row is past our window), and a window the row rolled out must be
    kept: both go to ``narrow``, so no increment is lost."""
    subject, model = str(returned[0]), str(returned[1])
    held: dict[Row, Amounts] = {}
    at = 2
    for p in PERIODS:
        key, out_key = returned[at], returned[at + 4]
        if wanted is None or (subject, key, model) in wanted:
            held[(subject, str(key), model)] = (int(returned[at + 1]), int(returned[at + 2]), int(returned[at + 3]))
        if key != windows[p].key:
            narrow.add((subject, windows[p].key, model), amounts, windows[p].end)
        if out_key is not None:
            rolled = (int(returned[at + 5]), int(returned[at + 6]), int(returned[at + 7]))
            narrow.add((subject, str(out_key), model), rolled, window_of_key(str(out_key))[1].end)
        at += len(_PER_PERIOD)
    return held


def _insert(session: AsyncSession) -> Any:
    return pg_insert if dialect_of(session) == "postgresql" else sqlite_insert


async def add(
    session: AsyncSession,
    subjects: Sequence[str],
    model: str,
    now: dt.datetime,
    *,
    credits: int,
    tokens: int,
    requests: int,
) -> dict[Row, Amounts]:
    """Add a call at ``now`` to each subject's two wide rows (all models and ``model``) in one
    statement, in row order (their locks), then what they did not take (and the windows they
    rolled out) to ``usage_counters`` in row order. Returns the windows the wide rows hold
    now; :func:`totals` adds the narrow rows to them."""
    windows = window_of_all(now)
    amounts = (credits, tokens, requests)
    wide = sorted({(s, m) for s in subjects for m in (ALL_MODELS, model)})
    stmt = _insert(session)(usage_windows).values([window_values(s, m, windows, amounts) for s, m in wide])
    upsert = stmt.on_conflict_do_update(
        index_elements=["subject", "model"],
        set_={column: literal_column(rule) for column, rule in UPSERT_RULE.items()},
    ).returning(*(usage_windows.c[name] for name in RETURNED))
    narrow = Narrow()
    held: dict[Row, Amounts] = {}
    for returned in (await session.execute(upsert)).all():
        held.update(landing(returned, windows, amounts, narrow))
    await add_narrow(session, narrow)
    return held


async def add_narrow(session: AsyncSession, narrow: Narrow) -> None:
    rows = narrow.sorted()
    if not rows:
        return
    values = [
        {"subject": s, "period_key": k, "model": m, "credits": c, "tokens": t, "requests": r, "period_end": end}
        for (s, k, m), (c, t, r), end in rows
    ]
    stmt = _insert(session)(UsageCounter).values(values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["subject", "period_key", "model"],
        set_={
            "credits": UsageCounter.credits + stmt.excluded.credits,
            "tokens": UsageCounter.tokens + stmt.excluded.tokens,
            "requests": UsageCounter.requests + stmt.excluded.requests,
        },
    )
    await session.execute(upsert)


async def _narrow_totals(session: AsyncSession, rows: Iterable[Row]) -> dict[Row, Amounts]:
    wanted = sorted(set(rows))
    if not wanted:
        return {}
    c = UsageCounter
    stmt = select(c.subject, c.period_key, c.model, c.credits, c.tokens, c.requests).where(
        tuple_(c.subject, c.period_key, c.model).in_(wanted)
    )
    return {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), int(r[5])) for r in (await session.execute(stmt)).all()}


async def totals(session: AsyncSession, held: Mapping[Row, Amounts], rows: Sequence[Row]) -> dict[Row, Amounts]:
    """The totals of ``rows``: the wide rows' windows (``held``, read under their locks) plus
    the narrow rows. Exact: every writer of a narrow row holds its wide row until it commits,
    and this read comes after the locks are ours."""
    narrow = await _narrow_totals(session, rows)
    return {row: plus(held.get(row, ZERO), narrow.get(row, ZERO)) for row in rows}


# ------------------------------------------------------------------ settle, reads, purge


def _by_wide_row(rows: Iterable[Row]) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of each wide row (subject, model): period → window key."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for subject, key, model in rows:
        found.setdefault((subject, model), {})[window_of_key(key)[0]] = key
    return found


async def adjust(
    session: AsyncSession, rows: Sequence[Row], *, credits: int, tokens: int, requests: int, wide: bool = True
) -> None:
    """Replace a reservation by the actual usage (or give it back); never below zero. A window
    the wide row still holds is adjusted there, any other in its narrow row (where the
    reservation went, or where the wide row rolled it out): wide rows first, in row order, then
    the narrow ones, as every writer takes them. ``wide`` False: a reservation counted before
    the wide rows existed, all of it in narrow rows (a wide row holding the same window since
    must not absorb its give-back, floored at zero there, while the reservation stays counted)."""
    if not rows or (credits == 0 and tokens == 0 and requests == 0):
        return
    deltas = dict(zip(FIELDS, (credits, tokens, requests), strict=True))
    elsewhere: list[Row] = [] if wide else list(rows)
    w = usage_windows.c
    for (subject, model), keys in sorted(_by_wide_row(rows if wide else ()).items()):
        values: dict[str, Any] = {}
        for p, key in keys.items():
            for f, delta in deltas.items():
                column = w[f"{p}_{f}"]
                values[column.name] = case((w[f"{p}_key"] == key, _floor0(column + delta)), else_=column)
        periods = list(keys)
        stmt = (
            update(usage_windows)
            .where(w.subject == subject, w.model == model)
            .values(values)
            .returning(*(w[f"{p}_key"] for p in periods))
        )
        held = (await session.execute(stmt)).first()
        for i, p in enumerate(periods):
            if held is None or held[i] != keys[p]:
                elsewhere.append((subject, keys[p], model))
    for subject, period_key, model in sorted(elsewhere):
        narrow = (
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
        await session.execute(narrow)


def _floor0(expr: Any) -> Any:
    return case((expr < 0, 0), else_=expr)


def first_passed(limits: list[Applicable], totals: dict[Row, Amounts], now: dt.datetime) -> Applicable | None:
    for limit in limits:
        row = (limit.subject, window(limit.period, now).key, limit.model)
        credits, tokens, requests = totals.get(row, ZERO)
        if (
            (limit.max_credits is not None and credits > limit.max_credits)
            or (limit.max_tokens is not None and tokens > limit.max_tokens)
            or (limit.max_requests is not None and requests > limit.max_requests)
        ):
            return limit
    return None


def held_windows(returned: Sequence[Any]) -> dict[Row, Amounts]:
    """The windows a ``usage_windows`` row holds (its columns ``RETURNED``, in that order)."""
    subject, model = str(returned[0]), str(returned[1])
    held: dict[Row, Amounts] = {}
    for i in range(len(PERIODS)):
        at = 2 + i * len(_PER_PERIOD)
        key, c, t, r = returned[at : at + 4]
        held[(subject, str(key), model)] = (int(c), int(t), int(r))
    return held


async def used(session: AsyncSession, rows: Sequence[Row]) -> dict[Row, Amounts]:
    """The totals of ``rows`` outside any upsert (the quota status). The wide rows are read FOR
    SHARE (PostgreSQL): a roll committed between this read and the narrow one would otherwise
    count its window twice (or not at all)."""
    if not rows:
        return {}
    w = usage_windows.c
    wide = sorted({(s, m) for s, _key, m in rows})
    stmt = (
        select(*(w[name] for name in RETURNED))
        .where(tuple_(w.subject, w.model).in_(wide))
        .order_by(w.subject, w.model)
        .with_for_update(read=True)
    )
    held: dict[Row, Amounts] = {}
    for returned in (await session.execute(stmt)).all():
        held.update(held_windows(returned))
    return await totals(session, held, list(dict.fromkeys(rows)))


async def purge_finished(tx: Tx, now: dt.datetime | None = None) -> int:
    """Drop what ended ``KEEP_AFTER_END`` ago: wide rows whose windows all ended (first: the
    lock order), then narrow rows."""
    cutoff = (now or utcnow()) - KEEP_AFTER_END
    wide = await tx.session.execute(delete(usage_windows).where(usage_windows.c.ends_at < cutoff))
    narrow = await tx.session.execute(delete(UsageCounter).where(UsageCounter.period_end < cutoff))
    return sum(int(getattr(result, "rowcount", 0) or 0) for result in (wide, narrow))
