from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer, StringConstraints, model_validator

from aihub.kit.inputs import Metadata, Timestamp
from aihub.kit.jsonutil import dumps
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


class UsageBatchEventIn(UsageEventIn):
    occurred_at: Timestamp | None = Field(
        default=None, description="When the call happened (RFC 3339): at most 7 days ago, not in the future"
    )


class UsageBatchIn(StrictInput):
    events: list[UsageBatchEventIn] = Field(description="At most 1,000 events (413 BATCH_TOO_LARGE beyond)")


class UsageBatchItem(ApiModel):
    request_id: str
    status: int = Field(description="201 recorded, 200 replayed, or the status of the event's error")
    id: uuid.UUID | None = None
    credits: int | None = None
    balance: int | None = None
    code: str | None = None
    message: str | None = None
    details: Any = None


class UsageBatchOut(ApiModel):
    results: list[UsageBatchItem]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One event's entry in a batch's answer (``UsageBatchItem``'s fields), a thousand per
    answer: built as a plain value and rendered by :func:`batch_body`, never validated one by one."""

    request_id: str
    status: int
    id: uuid.UUID | None = None
    credits: int | None = None
    balance: int | None = None
    code: str | None = None
    message: str | None = None
    details: Any = None


_ITEM_KEYS = tuple((name, field.alias or name) for name, field in UsageBatchItem.model_fields.items())


def batch_body(results: Sequence[BatchResult]) -> bytes:
    """``{results}`` as ``UsageBatchOut`` renders it (its aliases, unset fields left out), without
    validating a thousand items the service has just built: what the response costs most."""
    items = []
    for result in results:
        item = {}
        for name, key in _ITEM_KEYS:
            value = getattr(result, name)
            if value is not None:
                item[key] = value
        items.append(item)
    return dumps({"results": items})


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


Period = Literal["minute", "hour", "day", "week", "month"]
LimitModel = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
]
Cap = Annotated[int, Field(ge=0, le=10**15)]


class LimitIn(StrictInput):
    period: Period
    max_credits: Cap | None = None
    max_tokens: Cap | None = None
    max_requests: Annotated[int, Field(ge=0, le=10**12)] | None = None
    model: LimitModel | None = Field(default=None, description="provider/model; omitted: every model together")


class QuotaIn(StrictInput):
    """Either ``{limits: [...]}`` (1–20 limits, all enforced at once) or the single-limit form
    ``{period, maxCredits?, maxTokens?, maxRequests?}`` (a list of one)."""

    limits: Annotated[list[LimitIn], Field(min_length=1, max_length=20)] | None = None
    period: Period | None = None
    max_credits: Cap | None = None
    max_tokens: Cap | None = None
    max_requests: Annotated[int, Field(ge=0, le=10**12)] | None = None
    model: LimitModel | None = None

    @model_validator(mode="after")
    def _one_form(self) -> QuotaIn:
        single = [self.period, self.max_credits, self.max_tokens, self.max_requests, self.model]
        if self.limits is None and self.period is None:
            raise ValueError("give either limits or period")
        if self.limits is not None and any(v is not None for v in single):
            raise ValueError("give either limits or the single-limit fields, not both")
        return self

    def as_limits(self) -> list[LimitIn]:
        if self.limits is not None:
            return self.limits
        assert self.period is not None  # _one_form: the single-limit form names its period
        # Validated already, field by field, as the single form's own fields.
        single = LimitIn.model_construct(
            period=self.period,
            max_credits=self.max_credits,
            max_tokens=self.max_tokens,
            max_requests=self.max_requests,
            model=self.model,
        )
        return [single]


class LimitOut(ApiModel):
    period: Period
    model: str | None
    max_credits: int | None
    max_tokens: int | None
    max_requests: int | None


class QuotaOut(ApiModel):
    scope: str
    limits: list[LimitOut]
    period: Period = Field(description="The first limit's (the single-limit form)")
    max_credits: int | None
    max_tokens: int | None
    max_requests: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


class Amounts(ApiModel):
    credits: int | None
    tokens: int | None
    requests: int | None


class QuotaItem(ApiModel):
    scope: str
    period: Period
    model: str | None
    period_start: dt.datetime
    resets_at: dt.datetime
    limits: Amounts
    used: Amounts
    remaining: Amounts


class MyQuotaOut(ApiModel):
    scope: str | None = Field(description="The tightest limit's (least left); `items` lists every one")
    period: Period | None
    model: str | None = None
    period_start: dt.datetime | None
    resets_at: dt.datetime | None
    limits: Amounts
    used: Amounts
    remaining: Amounts
    items: list[QuotaItem]
