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
from dataclasses import asdict, dataclass
from typing import Protocol

from aihub.core.payments import service as payments
from aihub.core.reports import repository as repo
from aihub.core.reports import schemas
from aihub.core.usage import rollups
from aihub.core.usage.rollups import Figures
from aihub.core.users import service as users
from aihub.kit.db import Tx, as_utc, utcnow
from aihub.models import Payment


class _Measured(Protocol):
    @property
    def requests(self) -> int: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def credits(self) -> int: ...


@dataclass(slots=True)
class _Sums:
    """The four sums every usage figure has, added up row by row."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    credits: int = 0

    def add(self, row: _Measured) -> _Sums:
        self.requests += row.requests
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.credits += row.credits
        return self

    def fields(self) -> dict[str, int]:
        return asdict(self)


def _usage(row: Figures) -> schemas.UsageRow:
    return schemas.UsageRow.read(row)  # grouped by provider and model: both are set


def _reason(row: repo.ReasonSums) -> schemas.ReasonRow:
    return schemas.ReasonRow.read(row)


async def billing_report(
    tx: Tx, user_id: uuid.UUID, start: dt.datetime | None, end: dt.datetime | None
) -> schemas.BillingReport:
    user = await users.get_user(tx, user_id)
    mark = await rollups.complete_until(tx.session)
    opening = await repo.ledger_sum_before(tx.session, user_id, start) if start else 0
    closing = await repo.ledger_sum_before(tx.session, user_id, end)
    by_reason = [_reason(r) for r in await repo.ledger_by_reason(tx.session, user_id, start, end)]
    return schemas.BillingReport(
        user_id=user.id,
        email=user.email,
        from_=start,
        to=end,
        opening_balance=opening,
        credits=sum(r.credits for r in by_reason),
        debits=sum(r.debits for r in by_reason),
        closing_balance=closing,
        by_reason=by_reason,
        usage=[_usage(r) for r in await repo.usage_by_model(tx.session, user_id, start, end, mark=mark)],
        purchases=[_purchase(p) for p in await payments.purchases(tx, user_id, start, end)],
    )


def _purchase(payment: Payment) -> schemas.PurchaseRow:
    return schemas.PurchaseRow.read(payment, payment_id=payment.id)


def report_csv(report: schemas.BillingReport) -> str:
    """One section per block, each with its own header row; numbers as plain integers."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "key", "credits", "debits", "count"])
    writer.writerow(["summary", "opening_balance", report.opening_balance, "", ""])
    for line in report.by_reason:
        writer.writerow(["reason", line.reason, line.credits, line.debits, line.count])
    writer.writerow(["summary", "closing_balance", report.closing_balance, "", ""])
    writer.writerow([])
    writer.writerow(["section", "provider", "model", *MEASURES])
    for usage in report.usage:
        writer.writerow(["usage", usage.provider, usage.model, *_measures(usage)])
    if report.purchases:
        writer.writerow([])
        writer.writerow(["section", "payment_id", "package_id", "credits", "amount", "currency", "status"])
        for bought in report.purchases:
            writer.writerow(
                [
                    "purchase",
                    bought.payment_id,
                    bought.package_id,
                    bought.credits,
                    bought.amount,
                    bought.currency,
                    bought.status,
                ]
            )
    return out.getvalue()


MEASURES = ("requests", "input_tokens", "output_tokens", "credits")


def _measures(figure: schemas.Totals | schemas.UsageRow) -> tuple[int, int, int, int]:
    return (figure.requests, figure.input_tokens, figure.output_tokens, figure.credits)


async def overview(tx: Tx, start: dt.datetime | None, end: dt.datetime | None, top: int = 10) -> schemas.Overview:
    """Three grouped reads (day x provider x model; per user; day x user), each from rollups plus raw edges;
    totals, providers, models and days are folded from the first in Python."""
    mark = await rollups.complete_until(tx.session)
    totals = _Sums()
    providers: dict[str, _Sums] = {}
    models: dict[tuple[str, str], _Sums] = {}
    days: dict[str, _Sums] = {}
    for cell in await repo.usage_cells(tx.session, start, end, mark=mark):
        totals.add(cell)
        assert cell.provider is not None and cell.model is not None and cell.day is not None  # grouped by them
        providers.setdefault(cell.provider, _Sums()).add(cell)
        models.setdefault((cell.provider, cell.model), _Sums()).add(cell)
        days.setdefault(cell.day, _Sums()).add(cell)
    leaders, active = await repo.top_users(tx.session, start, end, top, mark=mark)
    active_by_day = await repo.active_users_by_day(tx.session, start, end, mark=mark)
    return schemas.Overview(
        from_=start,
        to=end,
        totals=schemas.Totals(**totals.fields()),
        active_users=active,
        top_users=[schemas.TopUser.read(r.figures, email=r.email) for r in leaders],
        by_provider=[schemas.ProviderRow(provider=p, **v.fields()) for p, v in sorted(providers.items())],
        by_model=[schemas.UsageRow(provider=p, model=m, **v.fields()) for (p, m), v in sorted(models.items())],
        daily=[
            schemas.DayRow(day=d, active_users=active_by_day.get(d, 0), **v.fields()) for d, v in sorted(days.items())
        ],
    )


async def billing_export(tx: Tx, start: dt.datetime | None, end: dt.datetime | None) -> schemas.BillingExport:
    """Every user's billing for one period, in a few grouped queries (not one report per user).

    A user appears when they had a ledger row before ``end`` or usage in the period. Run it in
    one snapshot (the job does): each row then balances, opening + credits - debits = closing.
    """
    mark = await rollups.complete_until(tx.session)
    opening = await repo.ledger_sums_by_user(tx.session, start) if start else {}
    closing = await repo.ledger_sums_by_user(tx.session, end)
    reasons: dict[uuid.UUID, list[schemas.ReasonRow]] = {}
    for row in await repo.ledger_by_user_reason(tx.session, start, end):
        assert row.user_id is not None  # grouped by it
        reasons.setdefault(row.user_id, []).append(_reason(row))
    usage: dict[uuid.UUID, list[schemas.UsageRow]] = {}
    for cell in await rollups.aggregate(tx.session, ["user_id", "provider", "model"], mark=mark, start=start, end=end):
        assert cell.user_id is not None  # grouped by it
        usage.setdefault(cell.user_id, []).append(_usage(cell))
    bought = await payments.purchases_by_user(tx, start, end)
    user_ids = set(closing) | set(usage)
    emails = await repo.emails(tx.session, list(user_ids))
    rows = []
    for user_id in user_ids:
        by_reason = reasons.get(user_id, [])
        rows.append(
            schemas.ExportRow(
                user_id=user_id,
                email=emails.get(user_id),
                opening_balance=opening.get(user_id, 0),
                credits=sum(r.credits for r in by_reason),
                debits=sum(r.debits for r in by_reason),
                closing_balance=closing.get(user_id, 0),
                by_reason=by_reason,
                usage=usage.get(user_id, []),
                purchases=[_purchase(p) for p in bought.get(user_id, [])],
            )
        )
    rows.sort(key=lambda r: (r.email or "", str(r.user_id)))
    return schemas.BillingExport(from_=start, to=end, generated_at=utcnow(), users=rows)


def _text_cell(value: str) -> str:
    """A spreadsheet would run a cell starting with = + - @ as a formula (an email may): quote it."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def export_csv(export: schemas.BillingExport) -> str:
    """One line per user: balances, credits and debits, and their usage summed over models."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["user_id", "email", "opening_balance", "credits", "debits", "closing_balance", *MEASURES[:3]]
    writer.writerow([*header, "usage_credits"])
    for row in export.users:
        used = _Sums()
        for line in row.usage:
            used.add(line)
        writer.writerow(
            [
                row.user_id,
                _text_cell(row.email or ""),
                row.opening_balance,
                row.credits,
                row.debits,
                row.closing_balance,
                *used.fields().values(),
            ]
        )
    return out.getvalue()


def overview_csv(overview: schemas.Overview) -> str:
    """One line per figure: section (totals, provider, model, day, top_user), its key, the sums."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "key", *MEASURES])
    writer.writerow(["totals", "", *_measures(overview.totals)])
    writer.writerow(["active_users", "", overview.active_users, "", "", ""])
    for provider in overview.by_provider:
        writer.writerow(["provider", provider.provider, *_measures(provider)])
    for model in overview.by_model:
        writer.writerow(["model", f"{model.provider}/{model.model}", *_measures(model)])
    for day in overview.daily:
        writer.writerow(["day", day.day, *_measures(day)])
    for user in overview.top_users:
        writer.writerow(["top_user", user.user_id, *_measures(user)])
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
