"""The ledger engine: natural batching (group commit) of money moves on PostgreSQL.

Requests enqueue a :class:`Move` and await its own :class:`Outcome`. One writer task per
process takes whatever is queued (up to ``max_batch``) the moment the previous batch has
committed — no timer, so an idle system adds no latency and a busy one amortises its commit
over every operation that arrived meanwhile — and applies the batch in ONE transaction with
a handful of set-based statements (see ``repository``):

    claim idempotency keys → lock the batch's accounts (user-id order) → decide each move in
    order against the running balance → one UPDATE of the net deltas (still conditional) →
    the ledger rows → the audit rows, linked into their chains → the stored outcomes → COMMIT.

Each move keeps its own outcome: one that cannot be paid is refused (402) without failing
its neighbours; several moves of one hot account are applied in arrival order. When the
batch fails as a whole (a deadlock, a constraint), it is rolled back and retried move by
move, each in a transaction of its own, so a bad one cannot take the others down.

Correctness never depends on there being one engine: the rows are locked and the UPDATE is
conditional, so engines of several processes (and request transactions) serialise in the
database exactly as one-transaction-per-move would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.ledger import repository as repo
from aihub.kit.db import utcnow
from aihub.kit.errors import AppError
from aihub.kit.idempotency import HEADER as IDEM_HEADER
from aihub.kit.idempotency import TTL, IdempotencyKeyInUse, IdempotencyKeyReused, Stored, refusal_body
from aihub.kit.jsonutil import dumps

log = structlog.get_logger("aihub.ledger")
MAX_BATCH = 512


@dataclass(frozen=True, slots=True)
class Claim:
    """An ``Idempotency-Key`` the move is bound to: who, which key, the request's fingerprint."""

    principal: str
    key: str
    request_hash: str

    @property
    def ident(self) -> tuple[str, str]:
        return (self.principal, self.key)


@dataclass(slots=True)
class Outcome:
    """What a move came to: its view and status (applied), an error (refused) or a stored replay."""

    status_code: int
    view: dict[str, Any] | None = None
    after: credits_repo.Balance | None = None  # the account right after this move
    debited: int = 0  # what it took (low-balance alerts look at debits only)
    body: bytes | None = None  # the stored body (a keyed move, or a replay)
    error: AppError | None = None
    replayed: bool = False


@dataclass(slots=True)
class Move:
    """One signed change of one account's balance, with its ledger row, audit row and key."""

    user_id: uuid.UUID
    amount: int  # > 0 credits, < 0 debits (only if that many are available)
    reason: str
    render: Callable[[dict[str, Any]], bytes]  # the 2xx body stored under the key
    status_code: int = 201
    metadata: dict[str, Any] | None = None
    related_id: uuid.UUID | None = None
    actor: audit.Actor = field(default_factory=lambda: audit.SYSTEM)
    request_id: str | None = None
    ip: str | None = None
    claim: Claim | None = None
    policy: credits.Policy = credits.NO_ALERTS
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Account:
    balance: int
    reserved: int
    threshold: int | None


Apply = Callable[[asyncpg.Connection, list[Any]], Awaitable[dict[int, Outcome]]]


def _move_ident(move: Move) -> Hashable | None:
    return move.claim.ident if move.claim is not None else None


class LedgerEngine:
    """One per process (and event loop) and kind of operation: a queue and the writer task that
    drains it, applying each batch with ``apply`` (moves by default). ``ident``: operations with
    the same identity (an idempotency key, a usage requestId) never share a batch: the later one
    waits for the next and replays the first."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_batch: int = MAX_BATCH,
        apply: Apply | None = None,
        ident: Callable[[Any], Hashable | None] = _move_ident,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._apply_batch: Apply = apply or _apply_moves
        self._ident = ident
        self._queue: deque[Any] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()

    async def submit(self, move: Any) -> Outcome:
        return (await self.submit_many([move]))[0]

    async def submit_many(self, ops: list[Any]) -> list[Outcome]:
        """Queue ``ops`` together (they share a batch when they fit) and await every outcome."""
        loop = asyncio.get_running_loop()
        for op in ops:
            op.future = loop.create_future()
        self._queue.extend(ops)
        self._start(loop)
        assert self._wake is not None
        self._wake.set()
        return [await op.future for op in ops]

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="ledger-writer")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
        for move in self._queue:
            if move.future is not None and not move.future.done():
                move.future.set_exception(RuntimeError("the ledger engine stopped"))
        self._queue.clear()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
            try:
                await self._apply(batch)
            except Exception as exc:  # never let the writer die: the moves learn it, the next batch runs
                log.exception("ledger.batch_failed")
                for move in batch:
                    if move.future is not None and not move.future.done():
                        move.future.set_exception(exc)

    async def _apply(self, batch: list[Any]) -> None:
        # A key twice in one batch: the later waits for the next batch and replays the first.
        seen: set[Hashable] = set()
        todo: list[Any] = []
        later: list[Any] = []
        for move in batch:
            ident = self._ident(move)
            if ident is not None:
                if ident in seen:
                    later.append(move)
                    continue
                seen.add(ident)
            todo.append(move)
        self._queue.extendleft(reversed(later))
        try:
            outcomes = await self._transaction(todo)
        except (asyncpg.PostgresError, OSError, RuntimeError):
            log.warning("ledger.batch_retried_one_by_one", size=len(todo), exc_info=True)
            for move in todo:
                try:
                    outcomes = await self._transaction([move])
                except Exception as exc:
                    assert move.future is not None
                    if not move.future.done():
                        move.future.set_exception(exc)
                    continue
                self._settle([move], outcomes)
            return
        self._settle(todo, outcomes)

    def _settle(self, moves: list[Any], outcomes: dict[int, Outcome]) -> None:
        """After commit: every operation learns its outcome; low-balance events go out."""
        for move in moves:
            outcome = outcomes[id(move)]
            if outcome.after is not None and outcome.debited > 0:
                self._alert(move, outcome.after, outcome.debited)
            assert move.future is not None
            if not move.future.done():
                move.future.set_result(outcome)

    def _alert(self, move: Any, after: credits_repo.Balance, debited: int) -> None:
        notify = move.policy.notify
        if notify is None:
            return
        event = credits.low_balance(move.policy, after.available + debited, after)
        if event is None:
            return
        task: asyncio.Future[None] = asyncio.ensure_future(notify(event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _transaction(self, moves: list[Any]) -> dict[int, Outcome]:
        async with self._engine.connect() as sa_conn:
            raw = await sa_conn.get_raw_connection()
            conn: asyncpg.Connection = raw.driver_connection
            async with conn.transaction():
                return await self._apply_batch(conn, moves)


async def _apply_moves(conn: asyncpg.Connection, moves: list[Move]) -> dict[int, Outcome]:
    now = utcnow()
    outcomes: dict[int, Outcome] = {}
    claimed = await _claim(conn, moves, now, outcomes)
    live = [move for move in moves if id(move) not in outcomes]
    accounts = (
        {
            uid: _Account(int(r["balance"]), int(r["reserved"]), r["low_balance_threshold"])
            for uid, r in (await repo.lock_accounts(conn, sorted({m.user_id for m in live}))).items()
        }
        if live
        else {}
    )
    deltas: dict[uuid.UUID, int] = {}
    ledger_rows: list[tuple[Any, ...]] = []
    audit_rows: list[Any] = []
    for move in live:
        account = accounts.get(move.user_id)
        if account is None:
            outcomes[id(move)] = _refused(credits.AccountNotFound())
            continue
        if move.amount < 0 and account.balance - account.reserved < -move.amount:
            details = {
                "balance": account.balance,
                "available": account.balance - account.reserved,
                "required": -move.amount,
            }
            outcomes[id(move)] = _refused(credits.InsufficientCredits(details=details))
            continue
        account.balance += move.amount
        deltas[move.user_id] = deltas.get(move.user_id, 0) + move.amount
        row_id = uuid.uuid4()
        key = move.claim.key if move.claim is not None else None
        ledger_rows.append(
            (
                row_id,
                move.user_id,
                move.amount,
                move.reason,
                account.balance,
                move.related_id,
                key,
                None if move.metadata is None else dumps(move.metadata).decode(),
                move.actor.id,
                now,
            )
        )
        after = credits_repo.Balance(move.user_id, account.balance, account.reserved, account.threshold)
        view = credits.transaction_view(
            {
                "id": row_id,
                "user_id": move.user_id,
                "amount": move.amount,
                "type": "credit" if move.amount > 0 else "debit",
                "reason": move.reason,
                "balance_after": account.balance,
                "related_id": move.related_id,
                "idempotency_key": key,
                "metadata": move.metadata,
                "created_at": now,
            }
        )
        outcomes[id(move)] = Outcome(move.status_code, view=view, after=after, debited=max(0, -move.amount))
        entry = audit.new_entry(
            move.actor,
            f"credits.{move.reason}" if move.amount > 0 else f"credits.debit.{move.reason}",
            "credit_account",
            move.user_id,
            before={"balance": account.balance - move.amount},
            after={"balance": account.balance, "reserved": account.reserved, "transactionId": str(row_id)},
        )
        audit_rows.append(audit.pending_row(entry, move.request_id, move.ip, now))
    if deltas:
        applied = await repo.apply(conn, deltas, now)
        if applied != len(deltas):  # the lock makes this impossible; if it happens, trust nothing
            raise RuntimeError("a locked account did not take its batch delta")
        await repo.ledger(conn, ledger_rows)
    if audit_rows:
        await _append_audit(conn, audit_rows)
    if claimed:
        await repo.store(conn, [_stored(move, outcomes[id(move)]) for move in claimed])
    return outcomes


async def _claim(
    conn: asyncpg.Connection, moves: list[Move], now: dt.datetime, outcomes: dict[int, Outcome]
) -> list[Move]:
    """Claim the batch's keys (sorted: one lock order everywhere); moves whose key is taken get
    their stored outcome (a replay) or the key's error, and are not applied."""
    keyed = sorted((m for m in moves if m.claim is not None), key=lambda m: m.claim.ident)  # type: ignore[union-attr]
    if not keyed:
        return []
    claims = [m.claim for m in keyed if m.claim is not None]
    won = await repo.claim(conn, [(c.principal, c.key, c.request_hash) for c in claims], now, now - TTL)
    lost = [m for m in keyed if m.claim is not None and m.claim.ident not in won]
    if lost:
        found = await repo.existing(conn, [m.claim.ident for m in lost if m.claim is not None])
        for move in lost:
            assert move.claim is not None
            row = found.get(move.claim.ident)
            if row is None or row["status_code"] is None or row["body"] is None:
                outcomes[id(move)] = _refused(IdempotencyKeyInUse())
            elif row["request_hash"] != move.claim.request_hash:
                outcomes[id(move)] = _refused(IdempotencyKeyReused(details={"header": IDEM_HEADER}))
            else:
                outcomes[id(move)] = Outcome(int(row["status_code"]), body=bytes(row["body"]), replayed=True)
    return [m for m in keyed if id(m) not in outcomes]


def _refused(error: AppError) -> Outcome:
    return Outcome(error.status_code, error=error)


def _stored(move: Move, outcome: Outcome) -> tuple[str, str, int, bytes]:
    """The outcome kept under the move's key (as kit.idempotency: 2xx and final refusals)."""
    assert move.claim is not None
    if outcome.error is not None:
        outcome.body = refusal_body(outcome.error)
    else:
        assert outcome.view is not None
        outcome.body = move.render(outcome.view)
    return (move.claim.principal, move.claim.key, outcome.status_code, outcome.body)


async def _append_audit(conn: asyncpg.Connection, rows: list[Any]) -> None:
    """Link the rows into their chains set-based: lock the heads (chain order), chain the rows
    in Python with the same hash the PostgreSQL append computes, insert them, move the heads."""
    heads = await repo.lock_heads(conn, list({row.chain for row in rows}))
    moved: dict[int, tuple[int, str, str]] = {}
    values: list[tuple[Any, ...]] = []
    for row in rows:
        seq, prev = heads[row.chain]
        seq += 1
        digest = audit.link(prev, seq, audit.text_digest(row.content))
        heads[row.chain] = (seq, digest)
        moved[row.chain] = (seq, digest, prev)
        values.append(
            (
                row.id,
                row.chain,
                seq,
                row.actor_id,
                row.actor_type,
                row.action,
                row.entity_type,
                row.entity_id,
                None if row.before is None else dumps(row.before).decode(),
                None if row.after is None else dumps(row.after).decode(),
                row.request_id,
                row.ip,
                row.created_at,
                prev,
                digest,
                row.content,
            )
        )
    await repo.audit(conn, values)
    await repo.advance_heads(conn, [(chain, seq, digest, prev) for chain, (seq, digest, prev) in moved.items()])


def stored_of(outcome: Outcome) -> Stored:
    assert outcome.body is not None
    return Stored(outcome.status_code, outcome.body)
