"""The ledger engine: natural batching (group commit) of money moves on PostgreSQL.

Requests enqueue a :class:`Move` and await its own :class:`Outcome`. One writer task per
process takes whatever is queued (up to ``max_batch``) the moment the previous batch has
committed — no timer, so an idle system adds no latency and a busy one amortises its commit
over every operation that arrived meanwhile — and applies the batch in ONE transaction with
a handful of set-based statements (see ``repository``):

    claim idempotency keys → lock the batch's accounts (user-id order) → decide each move in
    order against the running balance → one UPDATE of the net deltas (still conditional) →
    the ledger rows → the audit rows, linked into their chains → the stored outcomes → COMMIT.

A move is a signed balance change, or an act of the ledger's own (``Hold``, ``Capture``,
``Release``, ``Refund``: a reserved delta and the hold or debit rows, locked right after the
accounts and decided against the batch's running state), or a domain's ``Work`` (a promo
redemption, a Stripe event, a Sora generation, an authorization: its own rows in a savepoint of
the batch, its money through the engine's books). The lock order is one everywhere:
idempotency keys → accounts (user-id order) → holds and debits (id order) → a Work's own rows →
audit chain heads.

Each move keeps its own outcome: one that cannot be paid is refused (402) without failing
its neighbours, and a refused one writes nothing of its own; several moves of one hot
account are applied in arrival order. When the batch fails as a whole (a deadlock, a
constraint), it is rolled back and retried move by move, each in a transaction of its own,
so a bad one cannot take the others down.

Correctness never depends on there being one engine: the rows are locked and the UPDATE is
conditional, so engines of several processes (and request transactions) serialise in the
database exactly as one-transaction-per-move would.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from aihub.core.audit import service as audit
from aihub.core.credits import repository as credits_repo
from aihub.core.credits import service as credits
from aihub.core.credits.repository import Entry, HoldState
from aihub.core.credits.schemas import HoldOut
from aihub.core.ledger import repository as repo
from aihub.kit.db import AfterCommit, Tx, utcnow
from aihub.kit.errors import AppError
from aihub.kit.idempotency import HEADER as IDEM_HEADER
from aihub.kit.idempotency import IDEMPOTENCY_KEY, TTL, IdempotencyKeyInUse, IdempotencyKeyReused, Stored, refusal_body
from aihub.kit.jsonutil import dumps, loads

log = structlog.get_logger("aihub.ledger")
MAX_BATCH = 512
_ALONE_ATTEMPTS = 3
V = TypeVar("V")
_TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: SQLAlchemy and a Work move wrap the driver's error)
    is one the database resolves by a retry."""
    seen: BaseException | None = exc
    for _ in range(16):  # a chain is short; the bound only guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, _TRANSIENT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
    view: object | None = None  # what the move made: an Entry, a HoldState, a Work's result
    after: credits_repo.Balance | None = None  # the account right after this move
    debited: int = 0  # what it took (low-balance alerts look at debits only)
    body: bytes | None = None  # the stored body (a keyed move, or a replay)
    error: AppError | None = None
    replayed: bool = False
    after_commit: list[AfterCommit] = field(default_factory=list)  # a Work move's, run once committed


@dataclass(frozen=True, slots=True)
class Hold:
    """Reserve ``amount`` for ``ttl_seconds`` (``available`` drops, ``balance`` does not): a
    credit_holds row, no ledger row. The move's reason and metadata are the hold's."""

    amount: int
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class Capture:
    """Charge ``amount`` (None: all) of an active hold and release the rest: one debit."""

    hold_id: uuid.UUID
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Give an active hold back to ``available`` (``expire``: the sweep's, of an overdue one)."""

    hold_id: uuid.UUID
    expire: bool = False


@dataclass(frozen=True, slots=True)
class Refund:
    """Credit back ``amount`` (None: all that is left) of a debit, never more than is left."""

    transaction_id: uuid.UUID
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class Work:
    """A domain's own move (``kind``: promo, stripe, sora, authorization, …): ``run`` does its
    rows through an SQLAlchemy unit of work on the batch's connection, inside a savepoint of
    the batch, and moves money through ``credits.service`` as usual, which then goes through
    the engine's books (the batch's locked, running balances). Its result is the move's view.
    A refusal (an AppError) rolls back its savepoint and its share of the running state: its
    neighbours never see it. For kinds of low volume: each costs a few round trips of its own."""

    kind: str
    run: Callable[[Tx], Awaitable[object]]


Act = Hold | Capture | Release | Refund | Work


@dataclass(slots=True)
class Move:
    """One change of one account (a signed balance move, or an ``act`` on holds or a debit),
    with its ledger row, audit rows, its own rows and key. An ``act`` on a hold or a debit
    may leave ``user_id`` None: the engine finds the owner."""

    user_id: uuid.UUID | None
    amount: int  # > 0 credits, < 0 debits (only if that many are available); 0 with an act
    reason: str
    render: Callable[[object], bytes]  # the 2xx body stored under the key (from the view)
    status_code: int = 201
    metadata: dict[str, Any] | None = None
    related_id: uuid.UUID | None = None
    actor: audit.Actor = field(default_factory=lambda: audit.SYSTEM)
    request_id: str | None = None
    ip: str | None = None
    claim: Claim | None = None
    policy: credits.Policy = credits.NO_ALERTS
    act: Act | None = None
    future: asyncio.Future[Outcome] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        """What the engine counts it as: ``move`` or the act's name (``hold``, ``capture``, …)."""
        if self.act is None:
            return "move"
        if isinstance(self.act, Release) and self.act.expire:
            return "expire"
        if isinstance(self.act, Work):
            return self.act.kind
        return type(self.act).__name__.lower()


@dataclass(slots=True)
class _Account:
    balance: int
    reserved: int
    threshold: int | None


Apply = Callable[[asyncpg.Connection, list[Any]], Awaitable[dict[int, Outcome]]]
# The batch's connection as SQLAlchemy sees it, for the units of work of Work moves.
_SA_CONNECTION: contextvars.ContextVar[AsyncConnection] = contextvars.ContextVar("ledger_sa_connection")


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
        # Operations whose outcome committed, by kind (a move's act, or the op's own ``kind``):
        # what went through this writer, for tests and operators.
        self.committed: Counter[str] = Counter()
        # Batches that failed whole (a deadlock, a constraint) and were retried move by move:
        # correct either way, but each costs latency, so operators and tests watch it.
        self.retried_batches = 0

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
            self.retried_batches += 1
            for move in todo:
                try:
                    outcomes = await self._alone(move)
                except Exception as exc:
                    assert move.future is not None
                    if not move.future.done():
                        move.future.set_exception(exc)
                    continue
                self._settle([move], outcomes)
            return
        self._settle(todo, outcomes)

    async def _alone(self, move: Any) -> dict[int, Outcome]:
        """One move in a transaction of its own. A deadlock or serialization failure is the
        database choosing a victim, not a verdict on the move: it runs again (a few times)."""
        for attempt in range(1, _ALONE_ATTEMPTS + 1):
            try:
                return await self._transaction([move])
            except Exception as exc:
                if attempt == _ALONE_ATTEMPTS or not _transient(exc):
                    raise
                log.warning("ledger.move_retried", attempt=attempt, error=type(exc).__name__)
        raise AssertionError("unreachable")

    def _settle(self, moves: list[Any], outcomes: dict[int, Outcome]) -> None:
        """After commit: every operation learns its outcome; low-balance events go out."""
        for move in moves:
            outcome = outcomes[id(move)]
            self.committed[getattr(move, "kind", "move")] += 1
            for hook in outcome.after_commit:
                self._spawn(hook())
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
        self._spawn(notify(event))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Future[None] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _transaction(self, moves: list[Any]) -> dict[int, Outcome]:
        async with self._engine.connect() as sa_conn:
            raw = await sa_conn.get_raw_connection()
            conn: asyncpg.Connection = raw.driver_connection
            token = _SA_CONNECTION.set(sa_conn)
            try:
                async with conn.transaction():
                    return await self._apply_batch(conn, moves)
            finally:
                _SA_CONNECTION.reset(token)


@dataclass(slots=True)
class _Batch:
    """What one batch writes, gathered while its moves are decided in order."""

    now: dt.datetime
    deltas: dict[uuid.UUID, int] = field(default_factory=dict)  # balance, per account
    held: dict[uuid.UUID, int] = field(default_factory=dict)  # reserved, per account
    ledger_rows: list[tuple[Any, ...]] = field(default_factory=list)
    audit_rows: list[audit.PendingRow] = field(default_factory=list)
    new_holds: list[tuple[Any, ...]] = field(default_factory=list)
    resolved_holds: list[tuple[Any, ...]] = field(default_factory=list)

    def audit(self, move: Move, action: str, entity_type: str, entity_id: object, **states: Any) -> None:
        entry = audit.new_entry(move.actor, action, entity_type, entity_id, **states)
        self.audit_rows.append(audit.pending_row(entry, move.request_id, move.ip, self.now))


@dataclass(slots=True)
class _DebitState:
    id: uuid.UUID
    type: str
    amount: int
    refunded: int


async def _apply_moves(conn: asyncpg.Connection, moves: list[Move]) -> dict[int, Outcome]:
    batch = _Batch(utcnow())
    outcomes: dict[int, Outcome] = {}
    claimed = await _claim(conn, moves, batch.now, outcomes)
    live = [move for move in moves if id(move) not in outcomes]
    await _locate(conn, live, outcomes)
    live = [move for move in live if id(move) not in outcomes]
    accounts = (
        {
            uid: _Account(int(r["balance"]), int(r["reserved"]), r["low_balance_threshold"])
            for uid, r in (await repo.lock_accounts(conn, sorted({m.user_id for m in live if m.user_id}))).items()
        }
        if live
        else {}
    )
    holds, debits = await _lock_rows(conn, live)
    for move in live:
        if isinstance(move.act, Work):  # its money, if any, finds its accounts through the books
            outcomes[id(move)] = await _work(conn, move, move.act, _Books(conn, move, accounts, holds, batch))
            continue
        account = accounts.get(move.user_id) if move.user_id is not None else None
        if account is None:
            outcomes[id(move)] = _refused(credits.AccountNotFound())
            continue
        try:
            outcomes[id(move)] = _decide(move, account, holds, debits, batch)
        except AppError as exc:  # refused before it changed anything: its neighbours go on
            outcomes[id(move)] = _refused(exc)
    await _write(conn, batch)
    if claimed:
        await repo.store(conn, [_stored(move, outcomes[id(move)]) for move in claimed])
    return outcomes


def _hold_id(move: Move) -> uuid.UUID | None:
    return move.act.hold_id if isinstance(move.act, Capture | Release) else None


async def _locate(conn: asyncpg.Connection, moves: list[Move], outcomes: dict[int, Outcome]) -> None:
    """The owner of each hold or debit an ownerless move acts on (read unlocked: an owner never
    changes); one that does not exist is refused here."""
    on_holds = [m for m in moves if m.user_id is None and _hold_id(m) is not None]
    on_debits = [m for m in moves if m.user_id is None and isinstance(m.act, Refund)]
    if on_holds:
        found = await repo.owners(conn, repo.HOLD_OWNERS, [h for m in on_holds if (h := _hold_id(m)) is not None])
        for move in on_holds:
            hold_id = _hold_id(move)
            move.user_id = None if hold_id is None else found.get(hold_id)
            if move.user_id is None:
                outcomes[id(move)] = _refused(credits.HoldNotFound())
    if on_debits:
        ids = [m.act.transaction_id for m in on_debits if isinstance(m.act, Refund)]
        found = await repo.owners(conn, repo.DEBIT_OWNERS, ids)
        for move in on_debits:
            assert isinstance(move.act, Refund)
            move.user_id = found.get(move.act.transaction_id)
            if move.user_id is None:
                outcomes[id(move)] = _refused(credits.TransactionNotFound())


async def _lock_rows(
    conn: asyncpg.Connection, moves: list[Move]
) -> tuple[dict[uuid.UUID, HoldState], dict[uuid.UUID, _DebitState]]:
    """The holds and debits the batch resolves, locked after the accounts (one lock order)."""
    hold_ids = [h for m in moves if (h := _hold_id(m)) is not None]
    debit_ids = [m.act.transaction_id for m in moves if isinstance(m.act, Refund)]
    holds = {
        hid: HoldState(
            r["id"],
            r["user_id"],
            int(r["amount"]),
            r["captured"],
            r["status"],
            r["reason"],
            None if r["meta"] is None else loads(r["meta"]),
            r["expires_at"],
            r["created_at"],
            r["resolved_at"],
        )
        for hid, r in (await repo.lock_holds(conn, hold_ids) if hold_ids else {}).items()
    }
    debits = {
        tid: _DebitState(r["id"], r["type"], int(r["amount"]), int(r["refunded"]))
        for tid, r in (await repo.lock_debits(conn, debit_ids) if debit_ids else {}).items()
    }
    return holds, debits


def _decide(
    move: Move,
    account: _Account,
    holds: dict[uuid.UUID, HoldState],
    debits: dict[uuid.UUID, _DebitState],
    batch: _Batch,
) -> Outcome:
    """Apply one move to the running state, or raise its refusal having changed nothing."""
    act = move.act
    if act is None:
        return _signed(move, account, batch, move.amount, move.reason, move.related_id, move.metadata)
    assert not isinstance(act, Work)
    if isinstance(act, Hold):
        return _hold(move, act, account, batch)
    if isinstance(act, Refund):
        return _refund(move, act, account, debits, batch)
    hold = holds.get(act.hold_id)
    if hold is None:
        raise credits.HoldNotFound
    if isinstance(act, Capture):
        return _capture(move, act, hold, holds, account, batch)
    return _release(move, act, hold, holds, account, batch)


def _signed(
    move: Move,
    account: _Account,
    batch: _Batch,
    amount: int,
    reason: str,
    related_id: uuid.UUID | None,
    metadata: dict[str, Any] | None,
) -> Outcome:
    """A balance move with its ledger row and audit row (as ``credits.service`` writes them)."""
    if amount < 0 and account.balance - account.reserved < -amount:
        details = {"balance": account.balance, "available": account.balance - account.reserved, "required": -amount}
        raise credits.InsufficientCredits(details=details)
    assert move.user_id is not None
    account.balance += amount
    batch.deltas[move.user_id] = batch.deltas.get(move.user_id, 0) + amount
    row_id = uuid.uuid4()
    key = move.claim.key if move.claim is not None else None
    batch.ledger_rows.append(
        (
            row_id,
            move.user_id,
            amount,
            reason,
            account.balance,
            related_id,
            key,
            None if metadata is None else dumps(metadata).decode(),
            move.actor.id,
            batch.now,
        )
    )
    after = credits_repo.Balance(move.user_id, account.balance, account.reserved, account.threshold)
    entry = Entry(
        row_id,
        move.user_id,
        amount,
        "credit" if amount > 0 else "debit",
        reason,
        account.balance,
        related_id,
        key,
        metadata,
        batch.now,
    )
    batch.audit(
        move,
        f"credits.{reason}" if amount > 0 else f"credits.debit.{reason}",
        "credit_account",
        move.user_id,
        before={"balance": account.balance - amount},
        after={"balance": account.balance, "reserved": account.reserved, "transactionId": str(row_id)},
    )
    return Outcome(move.status_code, view=entry, after=after, debited=max(0, -amount))


def _reserve(move: Move, account: _Account, batch: _Batch, held: int) -> credits_repo.Balance:
    assert move.user_id is not None
    account.reserved += held
    batch.held[move.user_id] = batch.held.get(move.user_id, 0) + held
    return credits_repo.Balance(move.user_id, account.balance, account.reserved, account.threshold)


def _hold(move: Move, act: Hold, account: _Account, batch: _Batch) -> Outcome:
    available = account.balance - account.reserved
    if available < act.amount:
        details = {"balance": account.balance, "available": available, "required": act.amount}
        raise credits.InsufficientCredits(details=details)
    after = _reserve(move, account, batch, act.amount)
    hold = HoldState(
        uuid.uuid4(),
        after.user_id,
        act.amount,
        None,
        "held",
        move.reason,
        move.metadata,
        batch.now + dt.timedelta(seconds=act.ttl_seconds),
        batch.now,
        None,
    )
    batch.new_holds.append(
        (
            hold.id,
            hold.user_id,
            hold.amount,
            hold.reason,
            None if hold.metadata is None else dumps(hold.metadata).decode(),
            hold.expires_at,
            hold.created_at,
        )
    )
    batch.audit(move, "credits.hold", "credit_hold", hold.id, after=HoldOut.attributes(hold))
    return Outcome(move.status_code, view=hold, after=after, debited=act.amount)


def _check_active(hold: HoldState, charge: int | None, now: dt.datetime) -> None:
    """As ``credits.service``: an active hold resolves once, a capture never beyond it."""
    active = hold.status == "held" and hold.expires_at > now
    if active and (charge is None or charge <= hold.amount):
        return
    if active and charge is not None:
        raise credits.CaptureExceedsHold(details={"held": hold.amount, "requested": charge})
    raise credits.HoldNotActive(details={"status": "expired" if hold.status == "held" else hold.status})


def _resolve(
    hold: HoldState, holds: dict[uuid.UUID, HoldState], status: str, captured: int | None, batch: _Batch
) -> HoldState:
    """The hold resolved, as the batch's later moves will see it."""
    holds[hold.id] = resolved = replace(hold, status=status, captured=captured, resolved_at=batch.now)
    batch.resolved_holds.append((hold.id, status, captured, batch.now))
    return resolved


def _capture(
    move: Move, act: Capture, hold: HoldState, holds: dict[uuid.UUID, HoldState], account: _Account, batch: _Batch
) -> Outcome:
    _check_active(hold, act.amount, batch.now)
    charged = hold.amount if act.amount is None else act.amount
    _resolve(hold, holds, "captured", charged, batch)
    _reserve(move, account, batch, -hold.amount)
    batch.audit(
        move,
        "credits.hold.capture",
        "credit_hold",
        hold.id,
        before={"status": "held"},
        after={"status": "captured", "captured": charged},
    )
    # Un-reserving all of the hold made ``charged`` (≤ it) available: this debit cannot be refused.
    outcome = _signed(move, account, batch, -charged, "hold_capture", hold.id, hold.metadata)
    outcome.debited = 0  # ``available`` did not fall: the hold already took it
    return outcome


def _release(
    move: Move, act: Release, hold: HoldState, holds: dict[uuid.UUID, HoldState], account: _Account, batch: _Batch
) -> Outcome:
    if act.expire:  # the sweep: only a hold that is still held and overdue
        if hold.status != "held" or hold.expires_at > batch.now:
            raise credits.HoldNotActive(details={"status": hold.status})
        resolved = _resolve(hold, holds, "expired", hold.captured, batch)
        batch.audit(move, "credits.hold.expire", "credit_hold", hold.id, after={"status": "expired"})
    else:
        _check_active(hold, None, batch.now)
        resolved = _resolve(hold, holds, "released", None, batch)
        batch.audit(
            move,
            "credits.hold.release",
            "credit_hold",
            hold.id,
            before={"status": "held"},
            after={"status": "released"},
        )
    after = _reserve(move, account, batch, -hold.amount)
    return Outcome(move.status_code, view=resolved, after=after)


def _refund(move: Move, act: Refund, account: _Account, debits: dict[uuid.UUID, _DebitState], batch: _Batch) -> Outcome:
    original = debits.get(act.transaction_id)
    if original is None:
        raise credits.TransactionNotFound
    if original.type != "debit":
        raise credits.NotADebit
    left = -original.amount - original.refunded
    wanted = left if act.amount is None else act.amount
    if wanted <= 0 or wanted > left:
        details = {"debited": -original.amount, "refundable": left, "requested": wanted}
        raise credits.RefundExceedsDebit(details=details)
    outcome = _signed(move, account, batch, wanted, "refund", original.id, move.metadata)
    original.refunded += wanted
    return outcome


class _Books:
    """A Work move's way to the batch's money (``credits.Books``): every call decides against
    the running state as a move of its own would, and raises its refusal having changed nothing.
    An account or hold not locked yet is locked on first use (accounts before holds, as ever)."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        move: Move,
        accounts: dict[uuid.UUID, _Account],
        holds: dict[uuid.UUID, HoldState],
        batch: _Batch,
    ) -> None:
        self._conn, self._move, self._accounts, self._holds, self._batch = conn, move, accounts, holds, batch
        self.after: credits_repo.Balance | None = None
        self._available_before: int | None = None
        self._saved = (
            {uid: (a.balance, a.reserved) for uid, a in accounts.items()},
            dict(holds),  # frozen states: a copy of the map is a copy of them
            dict(batch.deltas),
            dict(batch.held),
            len(batch.ledger_rows),
            len(batch.audit_rows),
            len(batch.new_holds),
            len(batch.resolved_holds),
        )

    def restore(self) -> None:
        """Undo this move's share of the running state (it was refused)."""
        accounts, holds, deltas, held, n_ledger, n_audit, n_new, n_resolved = self._saved
        for uid in list(self._accounts):
            if uid not in accounts:
                del self._accounts[uid]  # locked on first use: re-read if needed (nothing applied)
            else:
                self._accounts[uid].balance, self._accounts[uid].reserved = accounts[uid]
        self._holds.clear()  # one locked on first use is re-read if needed (nothing applied)
        self._holds.update(holds)
        b = self._batch
        b.deltas.clear()
        b.deltas.update(deltas)
        b.held.clear()
        b.held.update(held)
        del b.ledger_rows[n_ledger:], b.audit_rows[n_audit:], b.new_holds[n_new:], b.resolved_holds[n_resolved:]

    def audit(self, entries: list[Any]) -> None:
        b = self._batch
        b.audit_rows.extend(audit.pending_row(e, self._move.request_id, self._move.ip, b.now) for e in entries)

    @property
    def debited(self) -> int:
        """How far this move took ``available`` down (for the low-balance alert)."""
        if self.after is None or self._available_before is None:
            return 0
        return max(0, self._available_before - self.after.available)

    async def _account(self, user_id: uuid.UUID) -> tuple[Move, _Account]:
        account = self._accounts.get(user_id)
        if account is None:
            found = (await repo.lock_accounts(self._conn, [user_id])).get(user_id)
            if found is None:
                raise credits.AccountNotFound
            account = _Account(int(found["balance"]), int(found["reserved"]), found["low_balance_threshold"])
            self._accounts[user_id] = account
        if self._available_before is None:
            self._available_before = account.balance - account.reserved
        return replace(self._move, user_id=user_id, future=None), account

    async def _hold(self, hold_id: uuid.UUID) -> tuple[Move, _Account, HoldState]:
        hold = self._holds.get(hold_id)
        if hold is None:
            owner = (await repo.owners(self._conn, repo.HOLD_OWNERS, [hold_id])).get(hold_id)
            if owner is None:
                raise credits.HoldNotFound
            await self._account(owner)
            self._holds.update((await _lock_rows(self._conn, [replace(self._move, act=Release(hold_id))]))[0])
            hold = self._holds[hold_id]
        move, account = await self._account(hold.user_id)
        return move, account, hold

    def _seen(self, outcome: Outcome, made: type[V]) -> V:
        self.after = outcome.after
        assert isinstance(outcome.view, made)
        return outcome.view

    async def move(
        self,
        user_id: uuid.UUID,
        amount: int,
        reason: str,
        *,
        related_id: uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Entry:
        move, account = await self._account(user_id)
        return self._seen(_signed(move, account, self._batch, amount, reason, related_id, metadata), Entry)

    async def hold(
        self, user_id: uuid.UUID, amount: int, *, reason: str, ttl_seconds: int, metadata: dict[str, Any] | None
    ) -> HoldState:
        move, account = await self._account(user_id)
        move.reason, move.metadata = reason, metadata
        return self._seen(_hold(move, Hold(amount, ttl_seconds), account, self._batch), HoldState)

    async def capture(self, hold_id: uuid.UUID, amount: int | None) -> Entry:
        move, account, hold = await self._hold(hold_id)
        return self._seen(_capture(move, Capture(hold_id, amount), hold, self._holds, account, self._batch), Entry)

    async def release(self, hold_id: uuid.UUID) -> HoldState:
        move, account, hold = await self._hold(hold_id)
        return self._seen(_release(move, Release(hold_id), hold, self._holds, account, self._batch), HoldState)

    async def balance(self, user_id: uuid.UUID) -> credits_repo.Balance | None:
        try:
            _, account = await self._account(user_id)
        except credits.AccountNotFound:
            return None
        return credits_repo.Balance(user_id, account.balance, account.reserved, account.threshold)


async def _work(conn: asyncpg.Connection, move: Move, act: Work, books: _Books) -> Outcome:
    """Run a Work move in a savepoint of the batch: its rows, its money through the books, its
    audit entries into the batch's chained append. A refusal undoes all three; an unexpected
    error fails the batch (then retried move by move, so it fails alone)."""
    session = AsyncSession(bind=_SA_CONNECTION.get(), expire_on_commit=False, autoflush=False)
    tx = Tx(session, request_id=move.request_id, ip=move.ip)
    tx.info.set(audit.ACTOR, move.actor)
    tx.info.set(credits.POLICY, move.policy)
    tx.info.set(credits.BOOKS, books)
    if move.claim is not None:
        tx.info.set(IDEMPOTENCY_KEY, move.claim.key)
    savepoint = conn.transaction()
    await savepoint.start()
    refusal: AppError | None = None
    view: object | None = None
    try:
        try:
            view = await act.run(tx)
        except AppError as exc:
            if not getattr(exc, "keep_changes", False):
                raise
            refusal = exc  # refused, its changes kept (an expiry it came across on the way)
        before, after = tx.take_hooks()
        entries = tx.info.pop(audit.ENTRIES, [])
        for hook in before:  # (the audit one finds its entries taken: the batch chains them)
            await hook(tx)
        await session.commit()  # SQLAlchemy's own savepoint, inside ours
    except AppError as exc:
        await session.rollback()
        await savepoint.rollback()
        books.restore()
        return _refused(exc)
    except Exception as exc:
        await session.rollback()
        await savepoint.rollback()
        books.restore()
        raise RuntimeError(f"a {act.kind} move failed") from exc
    finally:
        await session.close()
    await savepoint.commit()
    books.audit(entries)
    if refusal is not None:
        outcome = _refused(refusal)
    else:
        assert view is not None
        outcome = Outcome(move.status_code, view=view, after=books.after, debited=books.debited)
    outcome.after_commit = after
    return outcome


async def _write(conn: asyncpg.Connection, batch: _Batch) -> None:
    """The batch's writes, set-based, in the one lock order: accounts, holds, audit heads (the
    accounts and the holds it resolves were locked when it was read)."""
    if batch.new_holds:
        await repo.add_holds(conn, batch.new_holds)
    resolved = len(batch.resolved_holds)  # each locked and found held: a mismatch trusts nothing
    if resolved and await repo.resolve_holds(conn, batch.resolved_holds) != resolved:
        raise RuntimeError("a locked hold did not resolve")
    await settle(conn, batch.deltas, batch.held, batch.now, batch.ledger_rows, [_linkable(r) for r in batch.audit_rows])


async def settle(
    conn: asyncpg.Connection,
    deltas: dict[uuid.UUID, int],
    held: dict[uuid.UUID, int],
    now: dt.datetime,
    ledger_rows: list[tuple[Any, ...]],
    audit_rows: list[Linkable],
) -> None:
    """Lock the audit rows' chain heads (chain order), chain the rows in Python with the hash
    the PostgreSQL append computes, then write the balances, the ledger rows, the audit rows
    and the heads (``repo.settle``: one statement for a small batch). Nothing to write (a
    batch of refusals and replays): no statement."""
    if not (deltas or held or ledger_rows or audit_rows):
        return
    heads = await repo.lock_heads(conn, list({chain for chain, _content, _columns in audit_rows})) if audit_rows else {}
    moved: dict[int, tuple[int, str, str]] = {}
    values: list[tuple[Any, ...]] = []
    for chain, content, (row_id, actor_id, actor_type, action, entity_type, entity_id, *rest) in audit_rows:
        seq, prev = heads[chain]
        seq += 1
        digest = audit.link(prev, seq, audit.text_digest(content))
        heads[chain] = (seq, digest)
        moved[chain] = (seq, digest, prev)
        values.append(
            (row_id, chain, seq, actor_id, actor_type, action, entity_type, entity_id, *rest, prev, digest, content)
        )
    advanced = [(chain, seq, digest, prev) for chain, (seq, digest, prev) in moved.items()]
    applied = await repo.settle(conn, deltas, held, now, ledger_rows, values, advanced)
    if applied != len(deltas.keys() | held.keys()):  # the lock makes this impossible
        raise RuntimeError("a locked account did not take its batch delta")


# An audit row before its place in a chain: (chain, content, and the columns around the
# chain's: id, actor_id, actor_type, action, entity_type, entity_id, before, after (JSON text),
# request_id, ip, created_at).
Linkable = tuple[int, str, tuple[Any, ...]]


def _linkable(row: audit.PendingRow) -> Linkable:
    before = None if row.before is None else dumps(row.before).decode()
    after = None if row.after is None else dumps(row.after).decode()
    columns = (row.id, row.actor_id, row.actor_type, row.action, row.entity_type, row.entity_id, before, after)
    return (row.chain, row.content, (*columns, row.request_id, row.ip, row.created_at))


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


def stored_of(outcome: Outcome) -> Stored:
    assert outcome.body is not None
    return Stored(outcome.status_code, outcome.body)
