from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, StringConstraints

from aihub.kit.inputs import Metadata
from aihub.kit.schemas import ApiModel, StrictInput

Seconds = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
MAX_TOKENS = 10**12


class UsageEventIn(StrictInput):
    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    user_id: uuid.UUID
    provider: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    duration_seconds: Decimal | None = Field(default=None, ge=0, le=86_400, max_digits=12, decimal_places=3)
    metadata: Metadata | None = None


class UsageEventResult(ApiModel):
    id: uuid.UUID
    request_id: str
    credits: int
    balance: int


class UsageEventOut(ApiModel):
    id: uuid.UUID
    request_id: str
    user_id: uuid.UUID
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    duration_seconds: Seconds | None
    credits: int
    transaction_id: uuid.UUID | None
    metadata: dict[str, Any] | None
    created_at: dt.datetime


class UsagePage(ApiModel):
    items: list[UsageEventOut]
    next_cursor: str | None


class SummaryItem(ApiModel):
    key: str
    requests: int
    input_tokens: int
    output_tokens: int
    credits: int


class SummaryOut(ApiModel):
    group_by: Literal["provider", "model", "day", "day_model"]
    items: list[SummaryItem]


class QuotaIn(StrictInput):
    period: Literal["day", "month"]
    max_credits: int | None = Field(default=None, ge=0, le=10**15)
    max_tokens: int | None = Field(default=None, ge=0, le=10**15)
    max_requests: int | None = Field(default=None, ge=0, le=10**12)


class QuotaOut(ApiModel):
    scope: str
    period: Literal["day", "month"]
    max_credits: int | None
    max_tokens: int | None
    max_requests: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class Amounts(ApiModel):
    credits: int | None
    tokens: int | None
    requests: int | None


class MyQuotaOut(ApiModel):
    scope: str | None
    period: Literal["day", "month"] | None
    period_start: dt.datetime | None
    resets_at: dt.datetime | None
    limits: Amounts
    used: Amounts
    remaining: Amounts
