"""Billing reports and the analytics overview.

A report's balances come from sums of ledger amounts, not from ``balanceAfter`` of boundary
rows: sums do not depend on the order concurrent transactions committed in, so
``opening + credits - debits == closing`` holds for any period by construction, and
``closing`` equals the balance at the end of the period because the ledger reconciles.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from typing import Any

from aihub.core.reports import repository as repo
from aihub.core.usage import rollups
from aihub.core.users import service as users
from aihub.kit.db import Tx


async def billing_report(
    tx: Tx, user_id: uuid.UUID, start: dt.datetime | None, end: dt.datetime | None
) -> dict[str, Any]:
    user = await users.get_user(tx, user_id)
    mark = await rollups.complete_until(tx.session)
    opening = await repo.ledger_sum_before(tx.session, user_id, start) if start else 0
    closing = await repo.ledger_sum_before(tx.session, user_id, end)
    by_reason = await repo.ledger_by_reason(tx.session, user_id, start, end)
    credits_total = sum(int(r["credits"]) for r in by_reason)
    debits_total = sum(int(r["debits"]) for r in by_reason)
    return {
        "user_id": user.id,
        "email": user.email,
        "from": start,
        "to": end,
        "opening_balance": opening,
        "credits": credits_total,
        "debits": debits_total,
        "closing_balance": closing,
        "by_reason": [
            {"reason": r["reason"], "credits": int(r["credits"]), "debits": int(r["debits"]), "count": int(r["count"])}
            for r in by_reason
        ],
        "usage": [_usage_row(r) for r in await repo.usage_by_model(tx.session, user_id, start, end, mark=mark)],
    }


def _usage_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": row["provider"],
        "model": row["model"],
        "requests": int(row["requests"]),
        "input_tokens": int(row["input_tokens"]),
        "output_tokens": int(row["output_tokens"]),
        "credits": int(row["credits"]),
    }


def report_csv(report: dict[str, Any]) -> str:
    """One section per block, each with its own header row; numbers as plain integers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "key", "credits", "debits", "count"])
    writer.writerow(["summary", "opening_balance", report["opening_balance"], "", ""])
    for row in report["by_reason"]:
        writer.writerow(["reason", row["reason"], row["credits"], row["debits"], row["count"]])
    writer.writerow(["summary", "closing_balance", report["closing_balance"], "", ""])
    writer.writerow([])
    writer.writerow(["section", "provider", "model", "requests", "input_tokens", "output_tokens", "credits"])
    for row in report["usage"]:
        writer.writerow(
            [
                "usage",
                row["provider"],
                row["model"],
                row["requests"],
                row["input_tokens"],
                row["output_tokens"],
                row["credits"],
            ]
        )
    return out.getvalue()


def _totals(row: dict[str, Any]) -> dict[str, int]:
    return {k: int(row[k]) for k in ("requests", "input_tokens", "output_tokens", "credits")}


async def overview(tx: Tx, start: dt.datetime | None, end: dt.datetime | None, top: int = 10) -> dict[str, Any]:
    mark = await rollups.complete_until(tx.session)
    totals = await repo.usage_totals(tx.session, start, end, mark=mark)
    models = await repo.usage_by_model(tx.session, None, start, end, mark=mark)
    providers: dict[str, dict[str, int]] = {}
    for row in models:
        bucket = providers.setdefault(
            row["provider"], dict.fromkeys(("requests", "input_tokens", "output_tokens", "credits"), 0)
        )
        for key, value in _totals(row).items():
            bucket[key] += value
    return {
        "from": start,
        "to": end,
        "totals": _totals(totals),
        "active_users": int(totals["active_users"]),
        "top_users": [
            {"user_id": r["user_id"], "email": r["email"], **_totals(r)}
            for r in await repo.top_users(tx.session, start, end, top, mark=mark)
        ],
        "by_provider": [{"provider": p, **v} for p, v in sorted(providers.items())],
        "by_model": [_usage_row(r) for r in models],
        "daily": [{"day": r["day"], **_totals(r)} for r in await repo.daily(tx.session, start, end, mark=mark)],
    }
