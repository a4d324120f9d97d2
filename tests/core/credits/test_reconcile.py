"""Reconcile finds every kind of discrepancy, on PostgreSQL and SQLite: a balance that is not
the sum of its ledger, a reservation that is not the sum of the active holds, a ledger row whose
balanceAfter does not chain (reported at the first such row), an account with a balance and no
ledger at all; and it reports the totals of a clean ledger. The damage is done with raw SQL, as a
bug or a hand edit would do it (the ledger is append-only, so a bad row is an INSERT)."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from sqlalchemy import Uuid, bindparam, text

from aihub.core.credits.reconcile import AccountCheck, Report, reconcile
from aihub.kit.runtime import Runtime
from tests.conftest import create_user
from tests.core.credits.helpers import grant, money


async def _report(rt: Runtime, listed: int | None = None) -> Report:
    tx = rt.tx()
    try:
        return await (reconcile(tx) if listed is None else reconcile(tx, listed=listed))
    finally:
        await tx.close()


async def _sql(rt: Runtime, statement: str, **params: object) -> None:
    # Typed binds: SQLite stores a UUID as 32 hex digits, which only the column type knows.
    typed = [bindparam(name, type_=Uuid()) for name, value in params.items() if isinstance(value, uuid.UUID)]
    async with rt.engine.begin() as conn:
        await conn.execute(text(statement).bindparams(*typed), params)


async def _funded(client: httpx.AsyncClient, rt: Runtime, amount: int) -> uuid.UUID:
    user = await create_user(rt)
    await grant(client, rt, user.id, amount)
    return uuid.UUID(user.id)


async def _append(rt: Runtime, user_id: uuid.UUID, amount: int, balance_after: int) -> uuid.UUID:
    """A ledger row written beside the service (and its balance moved with it)."""
    row_id = uuid.uuid4()
    await _sql(
        rt,
        "INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)"
        " VALUES (:id, :u, :amount, :type, 'adjustment', :after, :now)",
        id=row_id,
        u=user_id,
        amount=amount,
        type="credit" if amount > 0 else "debit",
        after=balance_after,
        now=dt.datetime.now(dt.UTC),
    )
    await _sql(
        rt, "UPDATE credit_accounts SET balance = balance + :amount WHERE user_id = :u", amount=amount, u=user_id
    )
    return row_id


def _only(report: Report) -> AccountCheck:
    assert report.mismatched == 1 and len(report.mismatches) == 1, report
    return report.mismatches[0]


async def test_clean_ledger_reports_its_totals(client: httpx.AsyncClient, runtime: Runtime) -> None:
    first = await _funded(client, runtime, 40)
    second = await _funded(client, runtime, 2)
    deducted = await client.post(
        "/api/credits/deduct", json={"userId": str(first), "amount": 15}, headers=money(runtime)
    )
    assert deducted.status_code == 201, deducted.text
    held = await client.post("/api/credits/holds", json={"userId": str(second), "amount": 2}, headers=money(runtime))
    assert held.status_code == 201, held.text

    report = await _report(runtime)

    assert report.ok and report.mismatched == 0 and report.mismatches == []
    assert (report.accounts, report.rows, report.total_balance) == (2, 3, 27)


async def test_balance_off_its_ledger(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user_id = await _funded(client, runtime, 42)
    await _sql(runtime, "UPDATE credit_accounts SET balance = balance + 1 WHERE user_id = :u", u=user_id)

    check = _only(await _report(runtime))

    assert (check.user_id, check.balance, check.ledger_sum, check.rows) == (user_id, 43, 42, 1)
    assert check.reserved == check.held == 0 and check.broken_at is None


async def test_reserved_off_the_active_holds(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user_id = await _funded(client, runtime, 42)
    held = await client.post("/api/credits/holds", json={"userId": str(user_id), "amount": 5}, headers=money(runtime))
    assert held.status_code == 201, held.text
    await _sql(runtime, "UPDATE credit_accounts SET reserved = reserved + 3 WHERE user_id = :u", u=user_id)

    check = _only(await _report(runtime))

    assert (check.user_id, check.reserved, check.held) == (user_id, 8, 5)
    assert check.balance == check.ledger_sum == 42 and check.broken_at is None


async def test_balance_after_that_does_not_chain(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user_id = await _funded(client, runtime, 42)
    broken = await _append(runtime, user_id, 5, balance_after=50)  # 42 + 5 is 47
    await _append(runtime, user_id, 3, balance_after=53)  # chains on the bad row, still not on the sum

    check = _only(await _report(runtime))

    # balance == sum(ledger) == 50: only the chain tells, and it points at the first bad row.
    assert (check.user_id, check.balance, check.ledger_sum, check.rows) == (user_id, 50, 50, 3)
    assert check.broken_at == broken


async def test_balance_without_any_ledger(client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await create_user(runtime)
    user_id = uuid.UUID(user.id)
    await _sql(runtime, "UPDATE credit_accounts SET balance = 9 WHERE user_id = :u", u=user_id)

    check = _only(await _report(runtime))

    assert (check.user_id, check.balance, check.ledger_sum, check.rows) == (user_id, 9, 0, 0)


async def test_every_broken_account_is_counted_and_the_first_ones_listed(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    users = sorted([await _funded(client, runtime, 10) for _ in range(3)])
    clean = await _funded(client, runtime, 10)
    for user_id in users:
        await _sql(runtime, "UPDATE credit_accounts SET balance = balance + 1 WHERE user_id = :u", u=user_id)

    everything = await _report(runtime)
    listed = await _report(runtime, listed=2)

    assert everything.mismatched == 3 and [c.user_id for c in everything.mismatches] == users
    assert clean not in [c.user_id for c in everything.mismatches]
    assert listed.mismatched == 3 and [c.user_id for c in listed.mismatches] == users[:2]
    assert not listed.ok and (listed.accounts, listed.rows, listed.total_balance) == (4, 4, 43)
