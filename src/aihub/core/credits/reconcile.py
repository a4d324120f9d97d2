"""Reconcile the ledger: per account, balance == sum(ledger), reserved == sum(active holds),
and each row's balanceAfter == the previous row's + its amount (rows in ``seq`` order).

The database does the work: one statement (aggregates, and a running sum as a window
function over each account's rows) answers the totals and only the accounts that disagree, and
its answer is streamed. Python's memory therefore does not grow with the ledger (a million rows
used to be loaded whole: 681 MB), and being one statement it reads one consistent snapshot on
every database, SQLite included.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import text

from aihub.core.credits.metrics import RECONCILE_ACCOUNTS, RECONCILE_LAST_RUN, RECONCILE_MISMATCHES
from aihub.kit.db import Tx

MISMATCHES_LISTED = 1000  # accounts kept in a report; ``mismatched`` counts them all

# kind 0 is the one totals row (over every account), kind 1 one row per account that disagrees.
# ``break_seq`` is the first row whose balance_after differs from the running sum of amounts,
# which is also the first row that does not chain on its predecessor (the two agree up to it).
_RECONCILE = text(
    """
WITH chained AS (
    SELECT user_id, seq, amount, balance_after,
           sum(amount) OVER (PARTITION BY user_id ORDER BY seq ROWS UNBOUNDED PRECEDING) AS running
    FROM credit_transactions
),
per_user AS (
    SELECT user_id, count(*) AS n, sum(amount) AS total,
           min(CASE WHEN balance_after <> running THEN seq END) AS break_seq
    FROM chained
    GROUP BY user_id
),
held AS (
    SELECT user_id, sum(amount) AS held FROM credit_holds WHERE status = 'held' GROUP BY user_id
),
checked AS (
    SELECT a.user_id, a.balance, a.reserved,
           coalesce(p.total, 0) AS ledger_sum, coalesce(p.n, 0) AS n, coalesce(h.held, 0) AS held, p.break_seq
    FROM credit_accounts a
    LEFT JOIN per_user p ON p.user_id = a.user_id
    LEFT JOIN held h ON h.user_id = a.user_id
)
SELECT 0 AS kind, NULL AS user_id, count(*) AS accounts, coalesce(sum(balance), 0) AS balance,
       0 AS reserved, 0 AS ledger_sum, coalesce(sum(n), 0) AS n, 0 AS held, NULL AS broken_at
FROM checked
UNION ALL
SELECT 1, c.user_id, 1, c.balance, c.reserved, c.ledger_sum, c.n, c.held, t.id
FROM checked c
LEFT JOIN credit_transactions t ON t.seq = c.break_seq
WHERE c.balance <> c.ledger_sum OR c.reserved <> c.held OR c.break_seq IS NOT NULL
ORDER BY 1, 2
"""
).columns(
    sa.column("kind", sa.Integer()),
    sa.column("user_id", sa.Uuid()),
    sa.column("accounts", sa.BigInteger()),
    sa.column("balance", sa.BigInteger()),
    sa.column("reserved", sa.BigInteger()),
    sa.column("ledger_sum", sa.BigInteger()),
    sa.column("n", sa.BigInteger()),
    sa.column("held", sa.BigInteger()),
    sa.column("broken_at", sa.Uuid()),
)


@dataclass(slots=True)
class AccountCheck:
    user_id: uuid.UUID
    balance: int
    ledger_sum: int = 0
    rows: int = 0
    reserved: int = 0
    held: int = 0
    broken_at: uuid.UUID | None = None  # first row whose balanceAfter does not chain

    @property
    def ok(self) -> bool:
        return self.balance == self.ledger_sum and self.reserved == self.held and self.broken_at is None


@dataclass(slots=True)
class Report:
    accounts: int = 0
    rows: int = 0
    total_balance: int = 0
    mismatches: list[AccountCheck] = field(default_factory=list)  # the first MISMATCHES_LISTED, by user id
    mismatched: int = 0  # every account that disagrees

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


async def reconcile(tx: Tx, *, listed: int = MISMATCHES_LISTED) -> Report:
    """Read-only; on PostgreSQL run it in a REPEATABLE READ transaction (one snapshot for the
    whole read, even if this ever becomes several statements). ``listed`` bounds the accounts kept."""
    report = Report()
    result = await tx.session.stream(_RECONCILE.execution_options(yield_per=500))
    async for row in result:
        if row.kind == 0:
            report.accounts, report.rows, report.total_balance = int(row.accounts), int(row.n), int(row.balance)
            continue
        report.mismatched += 1
        if len(report.mismatches) < listed:
            report.mismatches.append(
                AccountCheck(
                    row.user_id,
                    int(row.balance),
                    ledger_sum=int(row.ledger_sum),
                    rows=int(row.n),
                    reserved=int(row.reserved),
                    held=int(row.held),
                    broken_at=row.broken_at,
                )
            )
    RECONCILE_ACCOUNTS.set(report.accounts)
    RECONCILE_MISMATCHES.set(report.mismatched)
    RECONCILE_LAST_RUN.set(time.time())
    return report
