"""What a backup promises about its database: row counts per table, the schema revision and
the ledger's totals. Written into the manifest at backup time and compared after a restore.

Read on one connection, so on PostgreSQL the caller decides the snapshot (the backup reads
inside the very snapshot pg_dump exports, so the manifest describes exactly the dump).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_TABLES = {
    "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename",
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
}
_LEDGER = """
SELECT
  (SELECT count(*) FROM credit_accounts) AS accounts,
  (SELECT coalesce(sum(balance), 0) FROM credit_accounts) AS balance,
  (SELECT coalesce(sum(reserved), 0) FROM credit_accounts) AS reserved,
  (SELECT count(*) FROM credit_transactions) AS transactions,
  (SELECT coalesce(sum(amount), 0) FROM credit_transactions) AS ledger_sum
"""


@dataclass(frozen=True)
class LedgerTotals:
    accounts: int = 0
    balance: int = 0  # sum of every account's balance
    reserved: int = 0  # sum of every account's active holds
    transactions: int = 0  # ledger rows
    ledger_sum: int = 0  # sum of every ledger row's amount (equals balance when reconciled)


@dataclass(frozen=True)
class Facts:
    tables: dict[str, int]
    revisions: list[str]
    ledger: LedgerTotals = field(default_factory=LedgerTotals)

    def to_json(self) -> dict[str, Any]:
        return {
            "alembicRevisions": self.revisions,
            "tables": self.tables,
            "ledger": {
                "accounts": self.ledger.accounts,
                "totalBalance": self.ledger.balance,
                "totalReserved": self.ledger.reserved,
                "transactions": self.ledger.transactions,
                "ledgerSum": self.ledger.ledger_sum,
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Facts:
        ledger = data["ledger"]
        return cls(
            tables={str(k): int(v) for k, v in data["tables"].items()},
            revisions=[str(r) for r in data["alembicRevisions"]],
            ledger=LedgerTotals(
                accounts=int(ledger["accounts"]),
                balance=int(ledger["totalBalance"]),
                reserved=int(ledger["totalReserved"]),
                transactions=int(ledger["transactions"]),
                ledger_sum=int(ledger["ledgerSum"]),
            ),
        )


async def table_names(conn: AsyncConnection) -> list[str]:
    return [str(row[0]) for row in await conn.execute(text(_TABLES[conn.dialect.name]))]


async def collect(conn: AsyncConnection) -> Facts:
    names = await table_names(conn)
    quote = conn.dialect.identifier_preparer.quote
    tables: dict[str, int] = {}
    for name in names:
        # A name from the catalog, quoted as an identifier: identifiers cannot be bound parameters.
        tables[name] = int((await conn.execute(text(f"SELECT count(*) FROM {quote(name)}"))).scalar_one())  # noqa: S608
    revisions: list[str] = []
    if "alembic_version" in tables:
        revisions = sorted(str(r[0]) for r in await conn.execute(text("SELECT version_num FROM alembic_version")))
    ledger = LedgerTotals()
    if "credit_accounts" in tables and "credit_transactions" in tables:
        row = (await conn.execute(text(_LEDGER))).one()
        ledger = LedgerTotals(*(int(value) for value in row))
    return Facts(tables=tables, revisions=revisions, ledger=ledger)


def differences(expected: Facts, actual: Facts) -> list[tuple[str, str, str]]:
    """(what, expected, found) for every fact that differs; empty when the two agree."""
    found: list[tuple[str, str, str]] = []
    if expected.revisions != actual.revisions:
        found.append(("alembic revision", ",".join(expected.revisions), ",".join(actual.revisions)))
    for name in sorted(set(expected.tables) | set(actual.tables)):
        want, got = expected.tables.get(name), actual.tables.get(name)
        if want != got:
            found.append((f"rows in {name}", _shown(want), _shown(got)))
    for key, want_total in asdict(expected.ledger).items():
        got_total = asdict(actual.ledger)[key]
        if want_total != got_total:
            found.append((f"ledger {key}", str(want_total), str(got_total)))
    return found


def _shown(value: int | None) -> str:
    return "no such table" if value is None else str(value)
