"""Reconcile the ledger: per account, balance == sum(ledger), reserved == sum(active holds),
and each row's balanceAfter == the previous row's + its amount (rows in ``seq`` order)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from aihub.core.credits import repository as repo
from aihub.core.credits.metrics import RECONCILE_ACCOUNTS, RECONCILE_LAST_RUN, RECONCILE_MISMATCHES
from aihub.kit.db import Tx


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
    mismatches: list[AccountCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


async def reconcile(tx: Tx) -> Report:
    """Read-only; run it in a REPEATABLE READ / snapshot transaction for a consistent picture."""
    checks = {
        row.user_id: AccountCheck(row.user_id, int(row.balance), reserved=int(row.reserved))
        for row in await repo.all_accounts(tx.session)
    }
    for user_id, held in (await repo.active_hold_totals(tx.session)).items():
        if user_id in checks:
            checks[user_id].held = held
    for row in await repo.ledger_rows(tx.session):
        check = checks[row.user_id]
        check.ledger_sum += int(row.amount)
        check.rows += 1
        if check.broken_at is None and int(row.balance_after) != check.ledger_sum:
            check.broken_at = row.id
    report = Report(accounts=len(checks))
    for check in checks.values():
        report.rows += check.rows
        report.total_balance += check.balance
        if not check.ok:
            report.mismatches.append(check)
    RECONCILE_ACCOUNTS.set(report.accounts)
    RECONCILE_MISMATCHES.set(len(report.mismatches))
    RECONCILE_LAST_RUN.set(time.time())
    return report
