"""Credits over HTTP: integer credits, camelCase outside."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from aihub.kit.inputs import Metadata
from aihub.kit.schemas import ApiModel, StrictInput

# A credit count: strict (no "5", no 1.5, no true) and bounded so sums never leave BIGINT.
MAX_AMOUNT = 1_000_000_000_000
Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
Reason = Literal["purchase", "usage", "refund", "promo", "adjustment", "hold_capture"]
# hold_capture rows only come from capturing a hold, refunds from the refund endpoint.
GrantReason = Literal["purchase", "promo", "adjustment"]
DebitReason = Literal["usage", "adjustment", "purchase"]
Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
MAX_HOLD_TTL = 7 * 86_400


class AccountOut(ApiModel):
    user_id: uuid.UUID
    balance: int
    reserved: int
    available: int


class TransactionOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    account_id: uuid.UUID
    amount: int
    type: Literal["credit", "debit"]
    reason: Reason
    balance_after: int
    related_id: uuid.UUID | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: dt.datetime


class TransactionPage(ApiModel):
    items: list[TransactionOut]
    next_cursor: str | None


class HoldOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    captured: int | None = None
    status: Literal["held", "captured", "released", "expired"]
    reason: Reason
    metadata: dict[str, Any] | None = None
    expires_at: dt.datetime
    created_at: dt.datetime
    resolved_at: dt.datetime | None = None


class CheckOut(ApiModel):
    sufficient: bool
    balance: int
    available: int


class GrantIn(StrictInput):
    user_id: uuid.UUID
    amount: Amount
    reason: GrantReason = "adjustment"
    note: Note | None = None
    metadata: Metadata | None = None


class DeductIn(StrictInput):
    user_id: uuid.UUID
    amount: Amount
    reason: DebitReason = "usage"
    metadata: Metadata | None = None


class CheckIn(StrictInput):
    user_id: uuid.UUID | None = None
    amount: Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]


class RefundIn(StrictInput):
    transaction_id: uuid.UUID
    amount: Amount | None = None
    reason: Note | None = None


class HoldIn(StrictInput):
    user_id: uuid.UUID
    amount: Amount
    reason: DebitReason = "usage"
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_HOLD_TTL)] | None = None
    metadata: Metadata | None = None


class CaptureIn(StrictInput):
    amount: Amount | None = None
