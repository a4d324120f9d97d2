from __future__ import annotations

import datetime as dt
import uuid

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


class Overview(ApiModel):
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    totals: Totals
    active_users: int
    top_users: list[TopUser]
    by_provider: list[ProviderRow]
    by_model: list[UsageRow]
    daily: list[DayRow]
