"""The credit ledger's rules: grant, deduct, check, refund, holds, expiry.

Every balance change is one conditional UPDATE (repository), followed in the same
transaction by its ledger row and its audit row; the edge commits. When an UPDATE matches no
row, the account is read only to tell the client why (404 or 402) — never to decide.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aihub.core.audit import service as audit
from aihub.core.credits import repository as repo
from aihub.core.credits.repository import Balance, Change, Entry, HoldState
from aihub.core.credits.schemas import CheckOut, HoldOut, TransactionOut
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound
from aihub.kit.idempotency import IDEMPOTENCY_KEY
from aihub.kit.pagination import Paged, PageParams, paged
from aihub.kit.slots import Slot


class AccountNotFound(NotFound):
    code, message = "ACCOUNT_NOT_FOUND", "No credit account for this user"


class InsufficientCredits(AppError):
    status_code, code, message = 402, "INSUFFICIENT_CREDITS", "Not enough credits available"


class TransactionNotFound(NotFound):
    code, message = "TRANSACTION_NOT_FOUND", "No such transaction"


class NotADebit(AppError):
    status_code, code, message = 422, "NOT_A_DEBIT", "Only a debit can be refunded"


class RefundExceedsDebit(Conflict):
    code, message = "REFUND_EXCEEDS_DEBIT", "The refund exceeds what is left of the debit"


class HoldNotFound(NotFound):
    code, message = "HOLD_NOT_FOUND", "No such hold"


class HoldNotActive(Conflict):
    code, message = "HOLD_NOT_ACTIVE", "The hold has already been captured, released or has expired"


class CaptureExceedsHold(AppError):
    status_code, code, message = 422, "CAPTURE_EXCEEDS_HOLD", "A capture cannot exceed the amount held"


# ------------------------------------------------------------------ low-balance policy


@dataclass(frozen=True, slots=True)
class LowBalance:
    """A change that took ``available`` from ``available_before`` down below ``threshold``.

    ``custom``: the account has thresholds of its own (``threshold`` is then the highest of
    them, a pre-filter); the notifier checks each of them against ``available_before`` and
    ``available``, which are exact: both come from the one conditional UPDATE that moved the
    money, so each downward crossing is seen by exactly one change, whatever the concurrency.
    """

    user_id: uuid.UUID
    threshold: int
    available: int
    balance: int
    available_before: int = 0
    custom: bool = False


Notifier = Callable[[LowBalance], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Policy:
    """Global low-balance threshold (0: off; an account's own thresholds win) and who to tell."""

    low_balance_threshold: int = 0
    notify: Notifier | None = None


NO_ALERTS = Policy()
# Where a request's unit of work carries the process's policy (set by core's get_tx), so that
# every debit path (usage events, Sora holds, …) alerts without passing it along.
POLICY: Slot[Policy] = Slot("credits.policy")


def _policy_of(tx: Tx, policy: Policy | None) -> Policy:
    if policy is not None:
        return policy
    return tx.info.get(POLICY, NO_ALERTS)


def low_balance(policy: Policy, available_before: int, after: Balance) -> LowBalance | None:
    """The event when this change took ``available`` from ≥ threshold to below it, else None.

    The conditional UPDATE returned the state right after this change, so exactly one change
    crosses a given threshold downwards: the event fires once per crossing without any
    extra state, and re-arms by itself once ``available`` is back at or above the threshold.
    An account's own thresholds are summarised by the highest of them in ``after.threshold``
    (0: none): only a change that ends below it can have crossed one, and only then does the
    notifier look at the list.
    """
    if policy.notify is None or after.available >= available_before:
        return None
    if after.threshold is not None:
        if after.threshold <= 0 or after.available >= after.threshold:
            return None
        return LowBalance(after.user_id, after.threshold, after.available, after.balance, available_before, True)
    threshold = policy.low_balance_threshold
    if threshold <= 0 or not available_before >= threshold > after.available:
        return None
    return LowBalance(after.user_id, threshold, after.available, after.balance, available_before)


def _watch(tx: Tx, policy: Policy, available_before: int, after: Balance) -> None:
    """Queue the low-balance event of this change, if any: sent only after commit (a rollback drops it)."""
    event = low_balance(policy, available_before, after)
    notify = policy.notify
    if event is None or notify is None:
        return

    async def send() -> None:
        await notify(event)

    tx.after_commit(send)


async def set_alert_ceiling(tx: Tx, user_id: uuid.UUID, ceiling: int | None) -> None:
    """Store the highest of an account's own alert thresholds (0: none; None: the global default)."""
    if not await repo.set_threshold(tx.session, user_id, ceiling):
        raise AccountNotFound


# ------------------------------------------------------------------ the engine's books
#
# On PostgreSQL a domain's money move (a promo redemption, a Sora generation, a payment, an
# authorization) runs inside the ledger engine's batch: its unit of work then carries the
# engine's books under BOOKS, and the functions below move money through them (decided
# against the batch's locked, running balances, written with the batch) instead of with SQL.


class Books(Protocol):
    async def move(
        self,
        user_id: uuid.UUID,
        amount: int,
        reason: str,
        *,
        related_id: uuid.UUID | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Entry: ...

    async def hold(
        self, user_id: uuid.UUID, amount: int, *, reason: str, ttl_seconds: int, metadata: dict[str, Any] | None
    ) -> HoldState: ...

    async def capture(self, hold_id: uuid.UUID, amount: int | None) -> Entry: ...

    async def release(self, hold_id: uuid.UUID) -> HoldState: ...

    async def balance(self, user_id: uuid.UUID) -> Balance | None: ...


BOOKS: Slot[Books] = Slot("ledger.books")


def _books(tx: Tx) -> Books | None:
    return tx.info.get(BOOKS)


# ------------------------------------------------------------------------------ reads


async def account(tx: Tx, user_id: uuid.UUID) -> Balance:
    books = _books(tx)
    found = await books.balance(user_id) if books is not None else await repo.get_account(tx.session, user_id)
    if found is None:
        raise AccountNotFound
    return found


async def check(tx: Tx, user_id: uuid.UUID, amount: int) -> CheckOut:
    """Advisory only: a later deduct decides atomically, whatever this said."""
    found = await repo.get_account(tx.session, user_id)
    if found is None:
        raise AccountNotFound
    return CheckOut(sufficient=found.available >= amount, balance=found.balance, available=found.available)


async def transactions(
    tx: Tx,
    user_id: uuid.UUID,
    params: PageParams,
    *,
    reason: str | None = None,
    created_from: dt.datetime | None = None,
    created_to: dt.datetime | None = None,
) -> Paged[TransactionOut]:
    if await repo.get_account(tx.session, user_id) is None:
        raise AccountNotFound
    stmt = repo.search(user_id, params, reason=reason, created_from=created_from, created_to=created_to)
    page = paged(await repo.fetch(tx.session, stmt), params, lambda r: (r.created_at, r.id))
    items = [TransactionOut.read(row, account_id=row.user_id, metadata=row.meta) for row in page.items]
    return Paged(items, page.next_cursor)


# ----------------------------------------------------------------------------- writes


def _change(
    tx: Tx,
    user_id: uuid.UUID,
    amount: int,
    reason: str,
    now: dt.datetime,
    related_id: uuid.UUID | None = None,
    metadata: dict[str, Any] | None = None,
) -> Change:
    actor = tx.info.get(audit.ACTOR)
    return Change(
        uuid.uuid4(),
        user_id,
        amount,
        reason,
        now,
        related_id=related_id,
        idempotency_key=tx.info.get(IDEMPOTENCY_KEY),
        metadata=metadata,
        actor_id=actor.id if actor is not None else None,
    )


def _recorded(tx: Tx, change: Change, after: Balance) -> Entry:
    """The audit row of one balance change (already applied with its ledger row); the row."""
    amount = change.amount
    audit.record(
        tx,
        f"credits.{change.reason}" if amount > 0 else f"credits.debit.{change.reason}",
        "credit_account",
        after.user_id,
        before={"balance": after.balance - amount},
        after={"balance": after.balance, "reserved": after.reserved, "transactionId": str(change.id)},
    )
    return change.entry(after.balance)


async def _append(
    tx: Tx,
    after: Balance,
    *,
    amount: int,
    reason: str,
    now: dt.datetime,
    related_id: uuid.UUID | None = None,
    metadata: dict[str, Any] | None = None,
) -> Entry:
    """Ledger row and audit row of a balance change that was applied on its own (hold capture)."""
    change = _change(tx, after.user_id, amount, reason, now, related_id, metadata)
    await repo.append(tx.session, change, after.balance)
    return _recorded(tx, change, after)


async def _why_not(tx: Tx, user_id: uuid.UUID, required: int) -> AppError:
    """The UPDATE matched nothing: say whether the account is missing or short."""
    found = await repo.get_account(tx.session, user_id)
    if found is None:
        return AccountNotFound()
    return InsufficientCredits(details={"balance": found.balance, "available": found.available, "required": required})


async def grant(
    tx: Tx,
    user_id: uuid.UUID,
    amount: int,
    *,
    reason: str,
    note: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Entry:
    meta = dict(metadata or {})
    if note is not None:
        meta["note"] = note
    if (books := _books(tx)) is not None:
        return await books.move(user_id, amount, reason, metadata=meta or None)
    change = _change(tx, user_id, amount, reason, utcnow(), metadata=meta or None)
    after = await repo.move(tx.session, change)
    if after is None:
        raise AccountNotFound
    return _recorded(tx, change, after)


async def deduct(
    tx: Tx,
    user_id: uuid.UUID,
    amount: int,
    *,
    reason: str,
    metadata: dict[str, Any] | None = None,
    policy: Policy | None = None,
) -> Entry:
    if (books := _books(tx)) is not None:  # its alert goes out with the engine's outcome
        return await books.move(user_id, -amount, reason, metadata=metadata)
    change = _change(tx, user_id, -amount, reason, utcnow(), metadata=metadata)
    after = await repo.move(tx.session, change)
    if after is None:
        raise await _why_not(tx, user_id, amount)
    _watch(tx, _policy_of(tx, policy), after.available + amount, after)
    return _recorded(tx, change, after)


async def refund(
    tx: Tx,
    transaction_id: uuid.UUID,
    amount: int | None,
    *,
    note: str | None = None,
) -> Entry:
    """Credit back part or all of a debit; never more than the debit minus earlier refunds.

    The debit's row is locked first (PostgreSQL), so concurrent refunds of one debit queue
    and each sees the refunds committed before it.
    """
    original = await repo.get_transaction(tx.session, transaction_id, for_update=True)
    if original is None:
        raise TransactionNotFound
    if original.type != "debit":
        raise NotADebit
    left = -original.amount - await repo.refunded_total(tx.session, original.id)
    wanted = left if amount is None else amount
    if wanted <= 0 or wanted > left:
        raise RefundExceedsDebit(details={"debited": -original.amount, "refundable": left, "requested": wanted})
    meta = {"note": note} if note else None
    change = _change(tx, original.user_id, wanted, "refund", utcnow(), related_id=original.id, metadata=meta)
    after = await repo.move(tx.session, change)
    if after is None:
        raise AccountNotFound
    return _recorded(tx, change, after)


# ------------------------------------------------------------------------------ holds


async def hold(
    tx: Tx,
    user_id: uuid.UUID,
    amount: int,
    *,
    reason: str,
    ttl_seconds: int,
    metadata: dict[str, Any] | None = None,
    policy: Policy | None = None,
) -> HoldState:
    """Reserve credits: ``available`` drops, ``balance`` does not, until capture or release."""
    if (books := _books(tx)) is not None:
        return await books.hold(user_id, amount, reason=reason, ttl_seconds=ttl_seconds, metadata=metadata)
    now = utcnow()
    after = await repo.reserve(tx.session, user_id, amount, now)
    if after is None:
        raise await _why_not(tx, user_id, amount)
    _watch(tx, _policy_of(tx, policy), after.available + amount, after)
    hold = HoldState(
        uuid.uuid4(),
        user_id,
        amount,
        None,
        "held",
        reason,
        metadata,
        now + dt.timedelta(seconds=ttl_seconds),
        now,
        None,
    )
    await repo.add_hold(tx.session, hold)
    audit.record(tx, "credits.hold", "credit_hold", hold.id, after=HoldOut.attributes(hold))
    return hold


async def _not_active(tx: Tx, hold_id: uuid.UUID, capture: int | None, now: dt.datetime) -> AppError:
    found = await repo.get_hold(tx.session, hold_id)
    if found is None:
        return HoldNotFound()
    if found.status == "held" and found.expires_at > now and capture is not None and capture > found.amount:
        return CaptureExceedsHold(details={"held": found.amount, "requested": capture})
    status = "expired" if found.status == "held" else found.status
    return HoldNotActive(details={"status": status})


async def capture(tx: Tx, hold_id: uuid.UUID, amount: int | None) -> Entry:
    """Charge part or all of a hold (the rest is released); a hold resolves once."""
    if (books := _books(tx)) is not None:
        return await books.capture(hold_id, amount)
    now = utcnow()
    resolved = await repo.resolve_hold(tx.session, hold_id, status="captured", now=now, charge=amount)
    if resolved is None:
        raise await _not_active(tx, hold_id, amount, now)
    assert resolved.captured is not None, "a captured hold records what it charged"
    charged = resolved.captured
    after = await repo.settle(tx.session, resolved.user_id, held=resolved.amount, charged=charged, now=now)
    audit.record(
        tx,
        "credits.hold.capture",
        "credit_hold",
        hold_id,
        before={"status": "held"},
        after={"status": "captured", "captured": charged},
    )
    return await _append(
        tx,
        after,
        amount=-charged,
        reason="hold_capture",
        now=now,
        related_id=hold_id,
        metadata=resolved.metadata,
    )


async def release(tx: Tx, hold_id: uuid.UUID) -> HoldState:
    if (books := _books(tx)) is not None:
        return await books.release(hold_id)
    now = utcnow()
    resolved = await repo.resolve_hold(tx.session, hold_id, status="released", now=now)
    if resolved is None:
        raise await _not_active(tx, hold_id, None, now)
    await repo.settle(tx.session, resolved.user_id, held=resolved.amount, charged=0, now=now)
    audit.record(
        tx,
        "credits.hold.release",
        "credit_hold",
        hold_id,
        before={"status": "held"},
        after={"status": "released"},
    )
    return resolved


async def expire_holds(tx: Tx, *, limit: int = 200, now: dt.datetime | None = None) -> int:
    """Release overdue holds (the periodic sweep). Accounts are updated in a sorted order so
    concurrent sweepers and requests never wait on each other in a cycle."""
    now = now or utcnow()
    expired = await repo.expire_holds(tx.session, now, limit)
    per_account: dict[uuid.UUID, int] = {}
    for row in expired:
        per_account[row.user_id] = per_account.get(row.user_id, 0) + int(row.amount)
        audit.record(tx, "credits.hold.expire", "credit_hold", row.id, after={"status": "expired"})
    for user_id in sorted(per_account):
        await repo.settle(tx.session, user_id, held=per_account[user_id], charged=0, now=now)
    return len(expired)


# What a credit move or read can be refused with (documented on their routes).
REFUSALS = (
    InsufficientCredits,
    AccountNotFound,
    TransactionNotFound,
    HoldNotFound,
    HoldNotActive,
    RefundExceedsDebit,
    NotADebit,
    CaptureExceedsHold,
)
