"""/api/billing/report and /api/analytics/overview."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from aihub.core.deps import CurrentPrincipal, RequirePermission, TxDep, TxRoute
from aihub.core.rbac.service import Principal
from aihub.core.reports import schemas
from aihub.core.reports import service as reports
from aihub.kit.errors import ValidationFailed

billing_router = APIRouter(prefix="/api/billing", tags=["billing"], route_class=TxRoute)
analytics_router = APIRouter(prefix="/api/analytics", tags=["analytics"], route_class=TxRoute)

From = Annotated[dt.datetime | None, Query(alias="from", description="Inclusive, RFC 3339")]
To = Annotated[dt.datetime | None, Query(alias="to", description="Exclusive, RFC 3339")]


def _window(start: dt.datetime | None, end: dt.datetime | None) -> None:
    if start is not None and end is not None and end <= start:
        raise ValidationFailed("`to` must be after `from`", details=[{"field": "query.to", "message": "before from"}])


@billing_router.get(
    "/report",
    response_model=schemas.BillingReport,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"}},
)
async def billing_report(
    tx: TxDep,
    caller: CurrentPrincipal,
    user_id: Annotated[uuid.UUID | None, Query(alias="userId")] = None,
    from_: From = None,
    to: To = None,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Opening balance, credits and debits by reason, usage by provider and model, closing balance.

    One's own report, or any user's with `billing:read`. `openingBalance + credits - debits ==
    closingBalance` for every period.
    """
    subject = user_id or caller.user_id
    if subject is None:
        raise ValidationFailed("userId is required for a service token", details=[{"field": "query.userId"}])
    if str(subject) != caller.id:
        caller.require("billing:read")
    _window(from_, to)
    report = await reports.billing_report(tx, subject, from_, to)
    if format == "csv":
        name = f"billing-{subject}-{(from_ or dt.datetime.min).date()}-{(to or dt.datetime.now(dt.UTC)).date()}.csv"
        return Response(
            reports.report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return report


@analytics_router.get("/overview", response_model=schemas.Overview)
async def analytics_overview(
    tx: TxDep,
    _: Annotated[Principal, RequirePermission("analytics:read")],
    from_: From = None,
    to: To = None,
) -> dict[str, Any]:
    """Totals, active users, top users, by provider, by model and a daily series (UTC days)."""
    _window(from_, to)
    return await reports.overview(tx, from_, to)
