from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

from pydantic import Field

from aihub.kit.schemas import ApiModel


class ReasonRow(ApiModel):
    reason: str
    credits: int
    debits: int
    count: int


class UsageRow(ApiModel):
    provider: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    credits: int


class PurchaseRow(ApiModel):
    payment_id: uuid.UUID
    package_id: str
    credits: int
    amount: int = Field(description="paid, in the currency's minor units")
    currency: str
    status: str
    refunded_credits: int
    transaction_id: uuid.UUID | None = Field(description="the ledger transaction of the grant")
    paid_at: dt.datetime | None


class BillingReport(ApiModel):
    user_id: uuid.UUID
    email: str
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    opening_balance: int
    credits: int = Field(description="Sum of every credit (positive) movement in the period")
    debits: int = Field(description="Sum of every debit in the period, as a positive number")
    closing_balance: int = Field(description="openingBalance + credits - debits")
    by_reason: list[ReasonRow]
    usage: list[UsageRow]
    purchases: list[PurchaseRow] = Field(default_factory=list, description="credit packages paid in the period")


class Totals(ApiModel):
    requests: int
    input_tokens: int
    output_tokens: int
    credits: int


class TopUser(Totals):
    user_id: uuid.UUID
    email: str | None


class ProviderRow(Totals):
    provider: str


class DayRow(Totals):
    day: str
    active_users: int = Field(description="Users with any usage that day")


class Overview(ApiModel):
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    totals: Totals
    active_users: int
    top_users: list[TopUser]
    by_provider: list[ProviderRow]
    by_model: list[UsageRow]
    daily: list[DayRow]


class ExportRow(ApiModel):
    """One user's billing in an all-users export (a BillingReport without the period fields)."""

    user_id: uuid.UUID
    email: str | None
    opening_balance: int
    credits: int
    debits: int
    closing_balance: int
    by_reason: list[ReasonRow]
    usage: list[UsageRow]
    purchases: list[PurchaseRow] = Field(default_factory=list, description="credit packages paid in the period")


class BillingExport(ApiModel):
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    generated_at: dt.datetime
    users: list[ExportRow]


class JobError(ApiModel):
    code: str
    message: str


class ReportJobOut(ApiModel):
    """A report computed in the background. Poll ``url``; fetch ``downloadUrl`` once it succeeded."""

    id: uuid.UUID
    kind: Literal["billing", "billing_export", "overview"]
    format: Literal["json", "csv"]
    status: Literal["queued", "running", "succeeded", "failed"]
    params: dict[str, Any] = Field(description="userId, from, to as requested")
    requested_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    expires_at: dt.datetime | None = Field(description="The job and its result are gone after this")
    error: JobError | None
    result_bytes: int | None
    url: str
    download_url: str | None


class ReportJobPage(ApiModel):
    items: list[ReportJobOut]
    next_cursor: str | None
