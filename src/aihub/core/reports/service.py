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

from aihub.core.payments import service as payments
from aihub.core.reports import repository as repo
from aihub.core.usage import rollups
from aihub.core.users import service as users
from aihub.kit.db import Tx, as_utc, utcnow


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
        "by_reason": [_reason_row(r) for r in by_reason],
        "usage": [_usage_row(r) for r in await repo.usage_by_model(tx.session, user_id, start, end, mark=mark)],
        "purchases": await payments.purchases(tx, user_id, start, end),
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
    if report.get("purchases"):
        writer.writerow([])
        writer.writerow(["section", "payment_id", "package_id", "credits", "amount", "currency", "status"])
        for row in report["purchases"]:
            writer.writerow(
                [
                    "purchase",
                    row["payment_id"],
                    row["package_id"],
                    row["credits"],
                    row["amount"],
                    row["currency"],
                    row["status"],
                ]
            )
    return out.getvalue()


MEASURES = ("requests", "input_tokens", "output_tokens", "credits")


def _totals(row: dict[str, Any]) -> dict[str, int]:
    return {k: int(row[k]) for k in MEASURES}


def _add(buckets: dict[Any, dict[str, int]], key: Any, row: dict[str, Any]) -> None:
    bucket = buckets.setdefault(key, dict.fromkeys(MEASURES, 0))
    for name in MEASURES:
        bucket[name] += int(row[name])


async def overview(tx: Tx, start: dt.datetime | None, end: dt.datetime | None, top: int = 10) -> dict[str, Any]:
    """Three grouped reads (day x provider x model; per user; day x user), each from rollups plus raw edges;
    totals, providers, models and days are folded from the first in Python."""
    mark = await rollups.complete_until(tx.session)
    totals: dict[str, int] = dict.fromkeys(MEASURES, 0)
    providers: dict[str, dict[str, int]] = {}
    models: dict[tuple[str, str], dict[str, int]] = {}
    days: dict[str, dict[str, int]] = {}
    for cell in await repo.usage_cells(tx.session, start, end, mark=mark):
        for name in MEASURES:
            totals[name] += int(cell[name])
        _add(providers, cell["provider"], cell)
        _add(models, (cell["provider"], cell["model"]), cell)
        _add(days, cell["day"], cell)
    leaders, active = await repo.top_users(tx.session, start, end, top, mark=mark)
    active_by_day = await repo.active_users_by_day(tx.session, start, end, mark=mark)
    return {
        "from": start,
        "to": end,
        "totals": totals,
        "active_users": active,
        "top_users": [{"user_id": r["user_id"], "email": r["email"], **_totals(r)} for r in leaders],
        "by_provider": [{"provider": p, **v} for p, v in sorted(providers.items())],
        "by_model": [{"provider": p, "model": m, **v} for (p, m), v in sorted(models.items())],
        "daily": [{"day": d, **v, "active_users": active_by_day.get(d, 0)} for d, v in sorted(days.items())],
    }


def _reason_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "reason": row["reason"],
        "credits": int(row["credits"]),
        "debits": int(row["debits"]),
        "count": int(row["count"]),
    }


async def billing_export(tx: Tx, start: dt.datetime | None, end: dt.datetime | None) -> dict[str, Any]:
    """Every user's billing for one period, in a few grouped queries (not one report per user).

    A user appears when they had a ledger row before ``end`` or usage in the period. Run it in
    one snapshot (the job does): each row then balances, opening + credits - debits = closing.
    """
    mark = await rollups.complete_until(tx.session)
    opening = await repo.ledger_sums_by_user(tx.session, start) if start else {}
    closing = await repo.ledger_sums_by_user(tx.session, end)
    reasons: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in await repo.ledger_by_user_reason(tx.session, start, end):
        reasons.setdefault(row["user_id"], []).append(_reason_row(row))
    usage: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in await rollups.aggregate(tx.session, ["user_id", "provider", "model"], mark=mark, start=start, end=end):
        usage.setdefault(row["user_id"], []).append(_usage_row(row))
    bought = await payments.purchases_by_user(tx, start, end)
    user_ids = set(closing) | set(usage)
    emails = await repo.emails(tx.session, list(user_ids))
    rows = []
    for user_id in user_ids:
        by_reason = reasons.get(user_id, [])
        rows.append(
            {
                "user_id": user_id,
                "email": emails.get(user_id),
                "opening_balance": opening.get(user_id, 0),
                "credits": sum(r["credits"] for r in by_reason),
                "debits": sum(r["debits"] for r in by_reason),
                "closing_balance": closing.get(user_id, 0),
                "by_reason": by_reason,
                "usage": usage.get(user_id, []),
                "purchases": bought.get(user_id, []),
            }
        )
    rows.sort(key=lambda r: (r["email"] or "", str(r["user_id"])))
    return {"from": start, "to": end, "generated_at": utcnow(), "users": rows}


def _text_cell(value: str) -> str:
    """A spreadsheet would run a cell starting with = + - @ as a formula (an email may): quote it."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_csv(export: dict[str, Any]) -> str:
    """One line per user: balances, credits and debits, and their usage summed over models."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "user_id",
            "email",
            "opening_balance",
            "credits",
            "debits",
            "closing_balance",
            "requests",
            "input_tokens",
            "output_tokens",
            "usage_credits",
        ]
    )
    for row in export["users"]:
        usage = {m: sum(u[m] for u in row["usage"]) for m in ("requests", "input_tokens", "output_tokens", "credits")}
        writer.writerow(
            [
                row["user_id"],
                _text_cell(row["email"] or ""),
                row["opening_balance"],
                row["credits"],
                row["debits"],
                row["closing_balance"],
                usage["requests"],
                usage["input_tokens"],
                usage["output_tokens"],
                usage["credits"],
            ]
        )
    return out.getvalue()


def overview_csv(overview: dict[str, Any]) -> str:
    """One line per figure: section (totals, provider, model, day, top_user), its key, the sums."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    measures = ("requests", "input_tokens", "output_tokens", "credits")
    writer.writerow(["section", "key", *measures])
    writer.writerow(["totals", "", *(overview["totals"][m] for m in measures)])
    writer.writerow(["active_users", "", overview["active_users"], "", "", ""])
    for row in overview["by_provider"]:
        writer.writerow(["provider", row["provider"], *(row[m] for m in measures)])
    for row in overview["by_model"]:
        writer.writerow(["model", f"{row['provider']}/{row['model']}", *(row[m] for m in measures)])
    for row in overview["daily"]:
        writer.writerow(["day", row["day"], *(row[m] for m in measures)])
    for row in overview["top_users"]:
        writer.writerow(["top_user", row["user_id"], *(row[m] for m in measures)])
    return out.getvalue()


def filename(prefix: str, start: dt.datetime | None, end: dt.datetime | None, ext: str) -> str:
    """``<prefix>-<from day or 'start'>-<to day or today>.<ext>``: safe in a Content-Disposition."""
    first = start.date().isoformat() if start else "start"
    last = (end or utcnow()).date().isoformat()
    return f"{prefix}-{first}-{last}.{ext}"


def span_seconds(start: dt.datetime | None, end: dt.datetime | None, since: dt.datetime | None) -> float:
    """How long a period a report covers: from ``start`` (or ``since``, where the data begins) to
    ``end`` (or now). Nothing exists before ``since``, so it bounds an open or early ``from``."""
    first = max((t for t in (as_utc(start), as_utc(since)) if t is not None), default=None)
    if first is None:
        return 0.0
    return ((as_utc(end) or utcnow()) - first).total_seconds()
