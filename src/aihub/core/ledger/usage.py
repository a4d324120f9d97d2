"""Usage events through the ledger engine (PostgreSQL): a whole batch in a handful of statements.

What ``usage.service.record_event`` does per event, done for every event of the batch at once,
in one transaction, with the same outcome per event:

    the requestIds already recorded → their replays → the accounts locked (sorted) → every
    other event counted in one upsert of each counter it counts toward (sorted: the counters'
    locks), which answers the totals the limits read → each event decided in order against the
    running totals and balances (quota, then credits) → the accepted events inserted once, settled →
    what the refused ones counted taken back → one UPDATE of the net debits (still
    conditional), the ledger rows and the audit rows (COPY), the audit chains linked → the
    rollups of any backdated day already rolled up, recomputed → COMMIT.

Rows are written only for what stands: a refused event leaves no usage row and no count.
Accounts before counters, as the ledger engine's batches take them (an authorization's Work
move counts its call after the engine locked the account): a user's counters are only ever
locked by a transaction that already holds that user's account, so the two writers never wait
on each other in a cycle.
The event's price is resolved before it is queued (the request's own read).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.ledger import repository as repo
from aihub.core.ledger.engine import LedgerEngine, Outcome, _append_audit, _refused
from aihub.core.usage import limits, rollups
from aihub.core.usage import service as usage
from aihub.kit.db import utcnow
from aihub.kit.errors import AppError
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.ids import uuid4s
from aihub.kit.jsonutil import dumps

MAX_EVENTS = 2000  # per transaction: a 1,000-event request and whatever single events queued


@dataclass(slots=True)
class UsageOp:
    """One priced usage event, ready to be claimed, counted and charged."""

    request_id: str
    request_hash: str
    user_id: uuid.UUID
    provider: str
    model: str
    price_id: uuid.UUID
    input_tokens: int
    output_tokens: int
    duration_seconds: Decimal | None
    charge: int
    reporter_id: str
    metadata: dict[str, Any] | None
    occurred_at: dt.datetime | None = None
    actor: audit.Actor = field(default_factory=lambda: audit.SYSTEM)
    request: str | None = None  # the HTTP request's id (audit rows)
    ip: str | None = None
    policy: credits.Policy = credits.NO_ALERTS
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


def _ident(op: UsageOp) -> str:
    return op.request_id


def writer(engine: AsyncEngine) -> LedgerEngine:
    return LedgerEngine(engine, max_batch=MAX_EVENTS, apply=apply_events, ident=_ident)


@dataclass(slots=True)
class _Account:
    balance: int
    reserved: int
    threshold: int | None


def _result(event_id: Any, request_id: str, charge: int, balance: int) -> dict[str, Any]:
    return {"id": event_id, "request_id": request_id, "credits": charge, "balance": balance}


# A limit an event is checked against: the limit, the counter row it reads, and its window.
_Check = tuple[limits.Applicable, limits.Row, limits.Window]


@dataclass(slots=True)
class _Spans:
    """The windows of one moment (every event of a batch not backdated shares one)."""

    index: int
    by_kind: dict[str, limits.Window]


@dataclass(slots=True)
class _Decided:
    """One pass over the batch's live events in order: what each comes to, and the rows to write."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)  # usage rows, settled
    accepted: list[tuple[UsageOp, uuid.UUID]] = field(default_factory=list)
    deltas: dict[uuid.UUID, int] = field(default_factory=dict)
    ledger_rows: list[tuple[Any, ...]] = field(default_factory=list)
    audit_rows: list[Any] = field(default_factory=list)
    days: set[dt.date] = field(default_factory=set)
    ids: Iterator[uuid.UUID] = field(default_factory=lambda: iter(()))  # drawn for the whole pass


async def apply_events(conn: asyncpg.Connection, ops: list[UsageOp]) -> dict[int, Outcome]:
    """Decide every event on locked totals and balances, then write only what stands.

    A requestId recorded by another writer after our first read is skipped by the insert (ON
    CONFLICT DO NOTHING waits for that writer): the batch is then decided again without it,
    under the same locks, and it is answered as the replay it has become.
    """
    now = utcnow()
    outcomes: dict[int, Outcome] = {}
    live = await _unrecorded(conn, ops, outcomes)
    if not live:
        return outcomes
    spans: dict[dt.datetime, _Spans] = {}
    applying = await repo.applicable_limits(conn, sorted({op.user_id for op in live}))
    checks = {id(op): _checks_of(op, applying.get(op.user_id), _spans(spans, op.occurred_at or now)) for op in live}
    watched = sorted({row for found in checks.values() for _limit, row, _window in found})
    accounts = await repo.lock_accounts(conn, sorted({op.user_id for op in live}))  # first: see the docstring
    # Every live event counted at once (one upsert in counter order: the counters' locks, held
    # to commit), answering the totals the limits read; less this batch, they are the truth
    # each event is decided on. What does not stand is taken back below.
    counted = live
    totals = await repo.add_counters(conn, _increments(counted, spans, now), _spans_rows(spans), watched)
    for op in counted:
        _count(totals, _rows(checks[id(op)]), -1, op)
    while True:
        decided = _decide(live, checks, spans, dict(totals), accounts, now)
        inserted = await repo.insert_events(conn, decided.events) if decided.events else set()
        lost = [op for op, _event_id in decided.accepted if op.request_id not in inserted]
        if not lost:
            break
        # Another writer recorded some of these requestIds since we looked: undo ours, answer
        # those as replays, and decide the rest again (the locks are still ours).
        await repo.drop_events(conn, [event_id for op, event_id in decided.accepted if op.request_id in inserted])
        await _resolve_recorded(conn, lost, outcomes)
        gone = {id(op) for op in lost}
        live = [op for op in live if id(op) not in gone]
    outcomes.update(decided.outcomes)
    accepted = {id(op) for op, _event_id in decided.accepted}
    if len(accepted) < len(counted):
        back = _increments([op for op in counted if id(op) not in accepted], spans, now, sign=-1)
        await repo.add_counters(conn, back, _spans_rows(spans), [])
    if decided.deltas:
        if await repo.apply(conn, decided.deltas, now) != len(decided.deltas):
            raise RuntimeError("a locked account did not take its batch delta")
        await repo.ledger(conn, decided.ledger_rows)
    if decided.audit_rows:
        await _append_audit(conn, decided.audit_rows)
    if decided.days:
        await _roll_backdated(conn, decided.days)
    return outcomes


async def _unrecorded(conn: asyncpg.Connection, ops: list[UsageOp], outcomes: dict[int, Outcome]) -> list[UsageOp]:
    """The ops whose requestId is not recorded yet; the others get their replay (or error)."""
    found = await repo.events_by_request_id(conn, [op.request_id for op in ops])
    if not found:
        return ops
    recorded = [op for op in ops if op.request_id in found]
    await _resolve_recorded(conn, recorded, outcomes, found)
    return [op for op in ops if op.request_id not in found]


async def _resolve_recorded(
    conn: asyncpg.Connection, ops: list[UsageOp], outcomes: dict[int, Outcome], found: dict[str, Any] | None = None
) -> None:
    if found is None:
        found = await repo.events_by_request_id(conn, [op.request_id for op in ops])
    hashes = {request_id: row["request_hash"] for request_id, row in found.items()}
    reused = [op for op in ops if hashes.get(op.request_id, op.request_hash) != op.request_hash]
    # An unknown user is refused before its requestId is looked at (as the per-event path does).
    known = await repo.existing_users(conn, sorted({op.user_id for op in reused})) if reused else set()
    for op in ops:
        row = found.get(op.request_id)
        if row is None:  # recorded and gone again (an event refused by an older writer)
            outcomes[id(op)] = _refused(usage.RequestInProgress())
        elif row["request_hash"] != op.request_hash:
            error = (
                IdempotencyKeyReused("This requestId was reported with different content")
                if op.user_id in known
                else credits.AccountNotFound()
            )
            outcomes[id(op)] = _refused(error)
        else:
            balance = row["balance_after"] if row["balance_after"] is not None else 0
            view = _result(row["id"], op.request_id, int(row["credits"]), int(balance))
            outcomes[id(op)] = Outcome(201, view=view, replayed=True)


def _spans(spans: dict[dt.datetime, _Spans], when: dt.datetime) -> _Spans:
    found = spans.get(when)
    if found is None:
        found = spans[when] = _Spans(len(spans), {kind: limits.window(kind, when) for kind in limits.PERIODS})
    return found


def _checks_of(op: UsageOp, applying: list[limits.Applicable] | None, spans: _Spans) -> list[_Check]:
    """The limits on this event (its user's, for all models or its own), in the order they are
    checked, each with the counter row it reads."""
    if not applying:
        return []
    model = f"{op.provider}/{op.model}"
    found: list[_Check] = []
    for limit in applying:
        if limit.model == limits.ALL_MODELS or limit.model == model:
            window = spans.by_kind[limit.period]
            found.append((limit, (limit.subject, window.key, limit.model), window))
    return found


def _passed(found: list[_Check], running: dict[limits.Row, tuple[int, int, int]]) -> _Check | None:
    for check in found:
        limit, row, _window = check
        credits_used, tokens_used, requests_used = running[row]
        if (
            (limit.max_credits is not None and credits_used > limit.max_credits)
            or (limit.max_tokens is not None and tokens_used > limit.max_tokens)
            or (limit.max_requests is not None and requests_used > limit.max_requests)
        ):
            return check
    return None


def _count(running: dict[limits.Row, tuple[int, int, int]], rows: list[limits.Row], sign: int, op: UsageOp) -> None:
    charge, tokens = sign * op.charge, sign * (op.input_tokens + op.output_tokens)
    for row in rows:
        credits_used, tokens_used, requests_used = running.get(row, (0, 0, 0))
        running[row] = (credits_used + charge, tokens_used + tokens, requests_used + sign)


def _decide(
    live: list[UsageOp],
    checks: dict[int, list[_Check]],
    spans: dict[dt.datetime, _Spans],
    running: dict[limits.Row, tuple[int, int, int]],
    locked_accounts: dict[uuid.UUID, Any],
    now: dt.datetime,
) -> _Decided:
    """Each event in order against the running totals and balances: quota, then credits."""
    out = _Decided(ids=iter(uuid4s(_IDS_PER_EVENT * len(live))))
    accounts = {
        uid: _Account(int(r["balance"]), int(r["reserved"]), r["low_balance_threshold"])
        for uid, r in locked_accounts.items()
    }
    for op in live:
        found = checks[id(op)]
        rows = _rows(found)
        if found:
            _count(running, rows, 1, op)
            passed = _passed(found, running)
            if passed is not None:
                _count(running, rows, -1, op)
                limit, _row, window = passed
                details: dict[str, Any] = {
                    "scope": limit.scope,
                    "period": limit.period,
                    "model": limit.model or None,
                    "resetsAt": window.end.isoformat(),
                }
                out.outcomes[id(op)] = _refused(usage.QuotaExceeded(details=details))
                continue
        account = accounts.get(op.user_id)
        if account is None or op.charge > account.balance - account.reserved:
            _count(running, rows, -1, op)
            if account is None:
                error: AppError = credits.AccountNotFound()
            else:
                available = account.balance - account.reserved
                short = {"balance": account.balance, "available": available, "required": op.charge}
                error = credits.InsufficientCredits(details=short)
            out.outcomes[id(op)] = _refused(error)
            continue
        _accept(out, op, account, now)
    return out


_IDS_PER_EVENT = 4  # the event's, its debit's and its two audit rows'


def _accept(out: _Decided, op: UsageOp, account: _Account, now: dt.datetime) -> None:
    event_id = next(out.ids)
    transaction_id: uuid.UUID | None = None
    after: credits_repo.Balance | None = None
    if op.charge > 0:
        transaction_id = next(out.ids)
        account.balance -= op.charge
        out.deltas[op.user_id] = out.deltas.get(op.user_id, 0) - op.charge
        meta = {"usageEventId": str(event_id), "requestId": op.request_id, "provider": op.provider, "model": op.model}
        out.ledger_rows.append(
            (
                transaction_id,
                op.user_id,
                -op.charge,
                "usage",
                account.balance,
                None,
                None,
                dumps(meta).decode(),
                op.actor.id,
                now,
            )
        )
        after = credits_repo.Balance(op.user_id, account.balance, account.reserved, account.threshold)
        debit = audit.new_entry(
            op.actor,
            "credits.debit.usage",
            "credit_account",
            op.user_id,
            before={"balance": account.balance + op.charge},
            after={"balance": account.balance, "reserved": account.reserved, "transactionId": str(transaction_id)},
        )
        out.audit_rows.append(audit.pending_row(debit, op.request, op.ip, now, next(out.ids)))
    out.events.append(_event_row(op, event_id, now, transaction_id, account.balance))
    out.accepted.append((op, event_id))
    record = audit.new_entry(
        op.actor,
        "usage.record",
        "usage_event",
        event_id,
        after=usage.recorded(op.request_id, op.user_id, op.provider, op.model, op.charge, op.price_id),
    )
    out.audit_rows.append(audit.pending_row(record, op.request, op.ip, now, next(out.ids)))
    view = _result(event_id, op.request_id, op.charge, account.balance)
    out.outcomes[id(op)] = Outcome(201, view=view, after=after, debited=op.charge)
    if op.occurred_at is not None:
        out.days.add(op.occurred_at.date())


def _rows(found: list[_Check]) -> list[limits.Row]:
    return list(dict.fromkeys(row for _limit, row, _window in found))


def _increments(
    ops: list[UsageOp], spans: dict[dt.datetime, _Spans], now: dt.datetime, sign: int = 1
) -> list[tuple[str, str, int, int, int, int]]:
    """What ``ops`` add (or, ``sign`` -1, take back) per subject, model and moment."""
    found: dict[tuple[str, str, int], list[int]] = {}
    for op in ops:
        key = (limits.user_subject(op.user_id), f"{op.provider}/{op.model}", spans[op.occurred_at or now].index)
        add = found.get(key)
        if add is None:
            add = found[key] = [0, 0, 0]
        add[0] += sign * op.charge
        add[1] += sign * (op.input_tokens + op.output_tokens)
        add[2] += sign
    return [(subject, model, moment, c, t, r) for (subject, model, moment), (c, t, r) in found.items()]


def _spans_rows(spans: dict[dt.datetime, _Spans]) -> list[tuple[int, str, dt.datetime]]:
    return [(found.index, window.key, window.end) for found in spans.values() for window in found.by_kind.values()]


def _event_row(
    op: UsageOp, event_id: uuid.UUID, now: dt.datetime, transaction_id: uuid.UUID | None, balance: int
) -> tuple[Any, ...]:
    return (
        event_id,
        op.request_id,
        op.request_hash,
        op.user_id,
        op.provider,
        op.model,
        op.price_id,
        op.input_tokens,
        op.output_tokens,
        op.duration_seconds,
        op.charge,
        op.reporter_id,
        None if op.metadata is None else dumps(op.metadata).decode(),
        op.occurred_at or now,
        transaction_id,
        balance,
    )


async def _roll_backdated(conn: asyncpg.Connection, days: set[dt.date]) -> None:
    """Backdated events on a day the rollups already cover: recompute that day, as the job would."""
    mark = await conn.fetchval("SELECT complete_until FROM usage_rollup_state WHERE name = $1", rollups.STATE)
    for day in sorted(d for d in days if mark is not None and d < mark):
        await repo.recompute_rollup_day(conn, day)
