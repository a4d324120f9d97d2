"""Usage events through the ledger engine (PostgreSQL): a whole batch in a handful of statements.

What ``usage.service.record_event`` does per event, done for every event of the batch at once,
in one transaction, with the same outcome per event:

    one read (OPEN_USAGE): the prices in force, the requestIds already recorded, the limits and
    the accounts locked (sorted) → the replays answered → every other event counted in one
    upsert of the wide usage rows it counts toward (one per subject and model, every period's
    window in it; sorted: their locks), then what those did not take in the narrow counters
    (sorted, after), which answers the totals the limits read (while the upsert runs, the
    events are prepared and decided on their credits) → each event's quota checked in order
    against the running totals (one passed: the batch decided again, quota then credits) → the
    accepted events inserted once, settled → what the refused ones counted taken back → the
    audit chain heads locked and the rows linked → one UPDATE of the net debits (still
    conditional), the ledger rows, the audit rows and the heads (one statement for a small
    batch, COPY for a large one: repository.settle) → the rollups of any backdated day already
    rolled up, recomputed → COMMIT.

Rows are written only for what stands: a refused event leaves no usage row and no count.
Accounts before counters, as the ledger engine's batches take them (an authorization's Work
move counts its call after the engine locked the account): a user's counters are only ever
locked by a transaction that already holds that user's account, so the two writers never wait
on each other in a cycle.
The events are priced here, in the batch's transaction (one read of the batch's models), not by
the requests: a request for one event then needs no database round trip of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.ledger import repository as repo
from aihub.core.ledger.engine import LedgerEngine, Linkable, Outcome, _refused, settle
from aihub.core.pricing import service as pricing
from aihub.core.usage import limits, rollups
from aihub.core.usage import service as usage
from aihub.kit.db import utcnow
from aihub.kit.errors import AppError
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.ids import uuid4s
from aihub.kit.jsonutil import canonical, dumps

MAX_EVENTS = 2000  # per transaction: a 1,000-event request and whatever single events queued


@dataclass(slots=True)
class UsageOp:
    """One usage event, ready to be priced, claimed, counted and charged. The writer prices it
    (one read of the batch's models) unless it comes priced (``price_id`` set)."""

    request_id: str
    request_hash: str
    user_id: uuid.UUID
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    duration_seconds: Decimal | None
    reporter_id: str
    metadata: dict[str, Any] | None
    price_id: uuid.UUID | None = None
    charge: int = 0
    occurred_at: dt.datetime | None = None
    actor: audit.Actor = field(default_factory=lambda: audit.SYSTEM)
    request: str | None = None  # the HTTP request's id (audit rows)
    ip: str | None = None
    policy: credits.Policy = credits.NO_ALERTS
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


def _ident(op: UsageOp) -> str:
    return op.request_id


@dataclass(frozen=True, slots=True)
class Part:
    """Which of the process's usage writers this is: ``index`` of ``count``."""

    index: int = 0
    count: int = 1


def part_of(user_id: uuid.UUID, count: int) -> int:
    """The writer a user's events go to: by the user's account audit chain, so that writers own
    disjoint chains (their event ids are drawn to match, see :func:`_event_ids`)."""
    return _chain("credit_account", str(user_id)) % count


class UsageWriters:
    """The process's usage writers: ``count`` ledger engines, each applying its own batches on
    its own connection, every user's events going to one of them (:func:`part_of`).

    One writer keeps one PostgreSQL backend busy and the process waiting on it: a batch's
    statements run one after another. Writers of disjoint users lock disjoint accounts and
    counters, and (their users and event ids partitioned by audit chain) disjoint chain heads,
    so their transactions run side by side instead of queueing on each other's locks. A
    requestId reported for two users can meet in both; the unique index serialises them (or
    the database picks a deadlock victim, which the engine retries alone): correct either way.
    """

    def __init__(self, engine: AsyncEngine, count: int = 1) -> None:
        self.parts = [
            LedgerEngine(
                engine,
                max_batch=MAX_EVENTS,
                apply=functools.partial(apply_events, part=Part(index, count)),
                ident=_ident,
            )
            for index in range(count)
        ]

    async def submit(self, op: UsageOp) -> Outcome:
        return await self.parts[part_of(op.user_id, len(self.parts))].submit(op)

    async def submit_many(self, ops: list[UsageOp]) -> list[Outcome]:
        """Every op to its writer (in the order given, within each), the outcomes in that order."""
        count = len(self.parts)
        if count == 1:
            return await self.parts[0].submit_many(ops)
        split: list[list[UsageOp]] = [[] for _ in self.parts]
        for op in ops:
            split[part_of(op.user_id, count)].append(op)
        answered = await asyncio.gather(
            *(writer.submit_many(chunk) for writer, chunk in zip(self.parts, split, strict=True) if chunk)
        )
        outcomes: dict[int, Outcome] = {}
        for chunk, found in zip([chunk for chunk in split if chunk], answered, strict=True):
            outcomes.update((id(op), outcome) for op, outcome in zip(chunk, found, strict=True))
        return [outcomes[id(op)] for op in ops]

    async def close(self) -> None:
        for writer in self.parts:
            await writer.close()

    @property
    def committed(self) -> Counter[str]:
        return sum((writer.committed for writer in self.parts), Counter())

    @property
    def retried_batches(self) -> int:
        return sum(writer.retried_batches for writer in self.parts)


@dataclass(slots=True)
class _Account:
    balance: int
    reserved: int
    threshold: int | None


def _result(event_id: Any, request_id: str, charge: int, balance: int) -> usage.Recorded:
    return usage.Recorded(event_id, request_id, charge, balance)


# A limit an event is checked against: the limit, the counter row it reads, and its window.
_Check = tuple[limits.Applicable, limits.Row, limits.Window]


@dataclass(slots=True)
class _Checks:
    """The limits on one event, in the order they are checked, and the counter rows they read."""

    found: list[_Check]
    rows: list[limits.Row]


@dataclass(slots=True)
class _Spans:
    """The windows of one moment (every event of a batch not backdated shares one)."""

    by_kind: dict[str, limits.Window]


@dataclass(slots=True)
class _Prepared:
    """What an event writes that no decision changes: its ids, its ``usage.record`` audit row and
    the JSON of its ledger and usage rows (built while the database counts the batch)."""

    event_id: uuid.UUID
    transaction_id: uuid.UUID
    debit_audit_id: uuid.UUID
    record: Linkable
    ledger_meta: str
    metadata: str | None
    user: str  # the user id's text


@dataclass(slots=True)
class _Decided:
    """One pass over the batch's live events in order: what each comes to, and the rows to write."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)  # usage rows, settled
    accepted: list[tuple[UsageOp, uuid.UUID]] = field(default_factory=list)
    refused: set[int] = field(default_factory=set)  # id(op) of the ones refused for their credits
    deltas: dict[uuid.UUID, int] = field(default_factory=dict)
    ledger_rows: list[tuple[Any, ...]] = field(default_factory=list)
    audit_rows: list[Linkable] = field(default_factory=list)
    days: set[dt.date] = field(default_factory=set)


async def apply_events(conn: asyncpg.Connection, ops: list[UsageOp], part: Part = Part()) -> dict[int, Outcome]:
    """Decide every event on locked totals and balances, then write only what stands.

    The counter upsert is the batch's longest statement: while the database runs it, the
    events are prepared and decided on their credits alone (the balances are locked already).
    When the totals come back, one pass in order checks each event's quota against them as
    the full decision would; if none is passed (the common case) that decision stands as it
    is, otherwise the batch is decided again with its quotas.

    A requestId recorded by another writer after our first read is skipped by the insert (ON
    CONFLICT DO NOTHING waits for that writer): the batch is then decided again without it,
    under the same locks, and it is answered as the replay it has become.
    """
    now = utcnow()
    outcomes: dict[int, Outcome] = {}
    # One read for the lot, the accounts locked first (see the docstring): the users of replays
    # and of unpriced events too, which a round trip less is worth (their rows stay as they are).
    opened = await repo.open_usage(
        conn,
        list({(op.provider, op.model) for op in ops if op.price_id is None}),
        [op.request_id for op in ops],
        sorted({op.user_id for op in ops}),
    )
    live = await _unrecorded(conn, _priced(ops, opened.prices, outcomes), opened.recorded, outcomes)
    if not live:
        return outcomes
    spans: dict[dt.datetime, _Spans] = {}
    users = sorted({op.user_id for op in live})
    subjects = {uid: limits.user_subject(uid) for uid in users}
    applying, accounts = opened.limits, opened.accounts
    checks = {id(op): _checks_of(op, applying.get(op.user_id), _spans(spans, op.occurred_at or now)) for op in live}
    watched = sorted({row for found in checks.values() for row in found.rows})
    # Every live event counted at once (one upsert in row order: the wide rows' locks, held to
    # commit; then the narrow rows, see _add_usage), answering the totals the limits read; less
    # this batch, they are the truth each event is decided on. What does not stand is taken back below.
    counted = live
    counting = asyncio.ensure_future(_add_usage(conn, counted, _spans(spans, now), subjects, watched))
    try:
        await asyncio.sleep(0)  # the upsert is sent: prepare and decide while the database counts
        prepared = _prepare(live, now, part)
        decided = _decide(live, prepared, None, accounts, now)
    finally:
        totals = await counting
    for op in counted:
        _count(totals, checks[id(op)].rows, -1, op)
    if not _quotas_hold(live, checks, dict(totals), decided):
        decided = _decide(live, prepared, _Quotas(checks, spans, dict(totals)), accounts, now)
    while True:
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
        decided = _decide(live, prepared, _Quotas(checks, spans, dict(totals)), accounts, now)
    outcomes.update(decided.outcomes)
    accepted = {id(op) for op, _event_id in decided.accepted}
    if len(accepted) < len(counted):
        # Under the same locks the wide rows still hold the windows they took these in (and
        # are still past the ones they did not): each take-back lands where its count went.
        back = [op for op in counted if id(op) not in accepted]
        await _add_usage(conn, back, spans[now], subjects, [], sign=-1)
    await settle(conn, decided.deltas, {}, now, decided.ledger_rows, decided.audit_rows)
    if decided.days:
        await _roll_backdated(conn, decided.days)
    return outcomes


def _priced(
    ops: list[UsageOp], prices: dict[tuple[str, str], repo.Price], outcomes: dict[int, Outcome]
) -> list[UsageOp]:
    """Every op priced at the price in force (read in the batch's transaction: a price changed
    before it began applies), or refused as the request path would refuse it (422
    UNKNOWN_MODEL, COST_OUT_OF_RANGE): pricing comes first, as there."""
    priced: list[UsageOp] = []
    for op in ops:
        if op.price_id is None:
            price = prices.get((op.provider, op.model))
            if price is None:
                outcomes[id(op)] = _refused(pricing.UnknownModel(details={"provider": op.provider, "model": op.model}))
                continue
            try:
                op.charge = pricing.credits_for(
                    price,
                    input_tokens=op.input_tokens,
                    output_tokens=op.output_tokens,
                    duration_seconds=op.duration_seconds or 0,
                )
            except AppError as exc:
                outcomes[id(op)] = _refused(exc)
                continue
            op.price_id = price.id
        priced.append(op)
    return priced


async def _unrecorded(
    conn: asyncpg.Connection, ops: list[UsageOp], found: dict[str, repo.Recorded], outcomes: dict[int, Outcome]
) -> list[UsageOp]:
    """The ops whose requestId is not recorded yet (``found``: the recorded ones); the others
    get their replay (or error)."""
    if not found:
        return ops
    recorded = [op for op in ops if op.request_id in found]
    if recorded:
        await _resolve_recorded(conn, recorded, outcomes, found)
    return [op for op in ops if op.request_id not in found]


async def _resolve_recorded(
    conn: asyncpg.Connection,
    ops: list[UsageOp],
    outcomes: dict[int, Outcome],
    found: dict[str, repo.Recorded] | None = None,
) -> None:
    if found is None:
        found = await repo.events_by_request_id(conn, [op.request_id for op in ops])
    hashes = {request_id: row.request_hash for request_id, row in found.items()}
    reused = [op for op in ops if hashes.get(op.request_id, op.request_hash) != op.request_hash]
    # An unknown user is refused before its requestId is looked at (as the per-event path does).
    known = await repo.existing_users(conn, sorted({op.user_id for op in reused})) if reused else set()
    for op in ops:
        row = found.get(op.request_id)
        if row is None:  # recorded and gone again (an event refused by an older writer)
            outcomes[id(op)] = _refused(usage.RequestInProgress())
        elif row.request_hash != op.request_hash:
            error = (
                IdempotencyKeyReused("This requestId was reported with different content")
                if op.user_id in known
                else credits.AccountNotFound()
            )
            outcomes[id(op)] = _refused(error)
        else:
            balance = row.balance_after if row.balance_after is not None else 0
            view = _result(row.id, op.request_id, int(row.credits), int(balance))
            outcomes[id(op)] = Outcome(201, view=view, replayed=True)


def _spans(spans: dict[dt.datetime, _Spans], when: dt.datetime) -> _Spans:
    found = spans.get(when)
    if found is None:
        found = spans[when] = _Spans(limits.window_of_all(when))
    return found


def _checks_of(op: UsageOp, applying: list[limits.Applicable] | None, spans: _Spans) -> _Checks:
    """The limits on this event (its user's, for all models or its own), in the order they are
    checked, each with the counter row it reads."""
    if not applying:
        return _NO_CHECKS
    model = f"{op.provider}/{op.model}"
    found: list[_Check] = []
    for limit in applying:
        if limit.model == limits.ALL_MODELS or limit.model == model:
            window = spans.by_kind[limit.period]
            found.append((limit, (limit.subject, window.key, limit.model), window))
    return _Checks(found, list(dict.fromkeys(row for _limit, row, _window in found)))


_NO_CHECKS = _Checks([], [])


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


@dataclass(slots=True)
class _Quotas:
    """What a decision with quotas reads: each event's checks, the windows, the running totals."""

    checks: dict[int, _Checks]
    spans: dict[dt.datetime, _Spans]
    running: dict[limits.Row, tuple[int, int, int]]


def _quotas_hold(
    live: list[UsageOp], checks: dict[int, _Checks], running: dict[limits.Row, tuple[int, int, int]], decided: _Decided
) -> bool:
    """Whether deciding with quotas would come to ``decided`` (decided on credits alone): the
    same pass as :func:`_decide`'s, in order, in which no event passes a limit. Each event is
    counted and checked; one refused for its credits is taken back, as there."""
    for op in live:
        found = checks[id(op)]
        if not found.found:
            continue
        _count(running, found.rows, 1, op)
        if _passed(found.found, running) is not None:
            return False
        if id(op) in decided.refused:
            _count(running, found.rows, -1, op)
    return True


def _decide(
    live: list[UsageOp],
    prepared: dict[int, _Prepared],
    quotas: _Quotas | None,
    locked_accounts: dict[uuid.UUID, repo.Locked],
    now: dt.datetime,
) -> _Decided:
    """Each event in order against the running totals and balances: quota (unless ``quotas`` is
    None: credits alone), then credits."""
    out = _Decided()
    accounts = {uid: _Account(*locked) for uid, locked in locked_accounts.items()}
    chains: dict[uuid.UUID, int] = {}  # an account's audit chain, once per user
    created = _created(now)
    for op in live:
        rows: list[limits.Row] = []
        if quotas is not None:
            found = quotas.checks[id(op)]
            rows = found.rows
            if found.found:
                _count(quotas.running, rows, 1, op)
                passed = _passed(found.found, quotas.running)
                if passed is not None:
                    _count(quotas.running, rows, -1, op)
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
            if quotas is not None:
                _count(quotas.running, rows, -1, op)
            if account is None:
                error: AppError = credits.AccountNotFound()
            else:
                available = account.balance - account.reserved
                short = {"balance": account.balance, "available": available, "required": op.charge}
                error = credits.InsufficientCredits(details=short)
            out.outcomes[id(op)] = _refused(error)
            out.refused.add(id(op))
            continue
        _accept(out, op, prepared[id(op)], account, now, created, chains)
    return out


def _prepare(live: list[UsageOp], now: dt.datetime, part: Part) -> dict[int, _Prepared]:
    """Each event's ids (drawn at once) and the rows no decision changes, by ``id(op)``."""
    ids = iter(uuid4s(_IDS_PER_EVENT * len(live)))
    events = iter(_event_ids(len(live), part))
    created = _created(now)
    found: dict[int, _Prepared] = {}
    texts = _Texts()
    for op in live:
        (event_id, event), transaction_id, debit_id, record_id = next(events), next(ids), next(ids), next(ids)
        assert op.price_id is not None  # priced before it was prepared (_priced)
        user = texts[op.user_id]
        after = usage.recorded(op.request_id, user, op.provider, op.model, op.charge, texts[op.price_id])
        record = _audit_row(op, record_id, "usage.record", "usage_event", event, None, after, now, created)
        meta = {"usageEventId": event, "requestId": op.request_id, "provider": op.provider, "model": op.model}
        metadata = None if op.metadata is None else dumps(op.metadata).decode()
        found[id(op)] = _Prepared(event_id, transaction_id, debit_id, record, dumps(meta).decode(), metadata, user)
    return found


class _Texts(dict[uuid.UUID, str]):
    """Each id's text, made once a batch: a batch names its users and prices over and over, and
    ``str(uuid)`` costs more than the rest of a row's field."""

    def __missing__(self, key: uuid.UUID) -> str:
        text = self[key] = str(key)
        return text


_IDS_PER_EVENT = 3  # its debit's and its two audit rows' (the event's own: _event_ids)


def _event_ids(count: int, part: Part) -> list[tuple[uuid.UUID, str]]:
    """``count`` random event ids (and their text) whose ``usage.record`` audit chain is one of
    the writer's own (``chain % part.count == part.index``): about ``part.count`` draws each."""
    found: list[tuple[uuid.UUID, str]] = []
    while len(found) < count:
        for candidate in uuid4s(part.count * (count - len(found)) + 8):
            text = str(candidate)
            if _chain("usage_event", text) % part.count == part.index:
                found.append((candidate, text))
                if len(found) == count:
                    break
    return found


def _created(now: dt.datetime) -> str:
    """An audit row's ``createdAt`` as its content says it (audit.service ``_content``)."""
    return now.astimezone(dt.UTC).isoformat()


def _chain(entity_type: str, entity_id: str) -> int:
    """The audit chain of an entity (as audit.service ``_Entry`` picks it)."""
    return zlib.crc32(f"{entity_type}:{entity_id}".encode()) % audit.AUDIT_CHAINS


def _audit_row(
    op: UsageOp,
    row_id: uuid.UUID,
    action: str,
    entity_type: str,
    entity_id: str,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    now: dt.datetime,
    created: str,
    chain: int | None = None,
) -> Linkable:
    """The row ``audit.pending_row(audit.new_entry(...))`` makes, without its generic steps: the
    states here are plain JSON of our own (no secret to scrub, nothing to copy)."""
    if chain is None:
        chain = _chain(entity_type, entity_id)
    actor = op.actor
    content = {
        "id": str(row_id),
        "chain": chain,
        "actorId": actor.id,
        "actorType": actor.type,
        "action": action,
        "entityType": entity_type,
        "entityId": entity_id,
        "before": before,
        "after": after,
        "requestId": op.request,
        "ip": op.ip,
        "createdAt": created,
    }
    columns = (
        row_id,
        actor.id,
        actor.type,
        action,
        entity_type,
        entity_id,
        None if before is None else dumps(before).decode(),
        dumps(after).decode(),
        op.request,
        op.ip,
        now,
    )
    return (chain, canonical(content).decode(), columns)


def _accept(
    out: _Decided,
    op: UsageOp,
    ready: _Prepared,
    account: _Account,
    now: dt.datetime,
    created: str,
    chains: dict[uuid.UUID, int],
) -> None:
    """Charge the event: its ledger row and debit audit row (the balance it leaves), its usage row."""
    event_id = ready.event_id
    transaction_id: uuid.UUID | None = None
    after: credits_repo.Balance | None = None
    if op.charge > 0:
        transaction_id = ready.transaction_id
        account.balance -= op.charge
        out.deltas[op.user_id] = out.deltas.get(op.user_id, 0) - op.charge
        out.ledger_rows.append(
            (
                transaction_id,
                op.user_id,
                -op.charge,
                "usage",
                account.balance,
                None,
                None,
                ready.ledger_meta,
                op.actor.id,
                now,
            )
        )
        after = credits_repo.Balance(op.user_id, account.balance, account.reserved, account.threshold)
        user = ready.user
        chain = chains.get(op.user_id)
        if chain is None:
            chain = chains[op.user_id] = _chain("credit_account", user)
        out.audit_rows.append(
            _audit_row(
                op,
                ready.debit_audit_id,
                "credits.debit.usage",
                "credit_account",
                user,
                {"balance": account.balance + op.charge},
                {"balance": account.balance, "reserved": account.reserved, "transactionId": str(transaction_id)},
                now,
                created,
                chain,
            )
        )
    out.events.append(_event_row(op, ready, now, transaction_id, account.balance))
    out.accepted.append((op, event_id))
    out.audit_rows.append(ready.record)
    view = _result(event_id, op.request_id, op.charge, account.balance)
    out.outcomes[id(op)] = Outcome(201, view=view, after=after, debited=op.charge)
    if op.occurred_at is not None:
        out.days.add(op.occurred_at.date())


def _amounts(op: UsageOp, sign: int) -> limits.Amounts:
    return (sign * op.charge, sign * (op.input_tokens + op.output_tokens), sign)


async def _add_usage(
    conn: asyncpg.Connection,
    ops: list[UsageOp],
    current: _Spans,
    subjects: dict[uuid.UUID, str],
    watched: list[limits.Row],
    sign: int = 1,
) -> dict[limits.Row, limits.Amounts]:
    """Count ``ops`` (or, ``sign`` -1, take them back), then the totals of ``watched``.

    One upsert of the wide rows (subject, all models and the event's model), in row order: it
    takes the events at the batch's moment (``current``); a backdated event adds nothing
    there (its windows are not the batch's) but its rows are locked and read all the same.
    Then one statement for the narrow rows: what the wide rows did not take, the windows they
    rolled out, every window of the backdated events; it answers the narrow totals."""
    wide: dict[tuple[str, str], limits.Amounts] = {}
    narrow = limits.Narrow()
    for op in ops:
        subject, amounts = subjects[op.user_id], _amounts(op, sign)
        on_wide = amounts if op.occurred_at is None else limits.ZERO
        for model in (limits.ALL_MODELS, f"{op.provider}/{op.model}"):
            wide[(subject, model)] = limits.plus(wide.get((subject, model), limits.ZERO), on_wide)
            if op.occurred_at is not None:
                for window in limits.window_of_all(op.occurred_at).values():
                    narrow.add((subject, window.key, model), amounts, window.end)
    if not wide:
        return {}
    held: dict[limits.Row, limits.Amounts] = {}
    increments = [(s, m, c, t, r) for (s, m), (c, t, r) in sorted(wide.items())]
    wanted = set(watched)
    for returned in await repo.add_windows(conn, increments, current.by_kind):
        took = wide[(str(returned[0]), str(returned[1]))]
        held.update(limits.landing(returned, current.by_kind, took, narrow, wanted))
    if not narrow.rows and not watched:
        return {}
    found = await repo.add_counters(conn, narrow.sorted(), watched)
    return {row: limits.plus(held.get(row, limits.ZERO), found.get(row, limits.ZERO)) for row in watched}


def _event_row(
    op: UsageOp, ready: _Prepared, now: dt.datetime, transaction_id: uuid.UUID | None, balance: int
) -> tuple[Any, ...]:
    return (
        ready.event_id,
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
        ready.metadata,
        op.occurred_at or now,
        transaction_id,
        balance,
    )


async def _roll_backdated(conn: asyncpg.Connection, days: set[dt.date]) -> None:
    """Backdated events on a day the rollups already cover: recompute that day, as the job would."""
    mark = await conn.fetchval("SELECT complete_until FROM usage_rollup_state WHERE name = $1", rollups.STATE)
    for day in sorted(d for d in days if mark is not None and d < mark):
        await repo.recompute_rollup_day(conn, day)
