"""Payments over HTTP: integer credits, amounts in the currency's minor units, camelCase outside."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints

from aihub.core.credits.schemas import Amount
from aihub.kit.schemas import ApiModel, StrictInput

PackageId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)]
Status = Literal["pending", "paid", "refunded", "failed"]
# Minor units (cents); Stripe's own ceiling for one charge is 99,999,999 of most currencies.
MinorUnits = Annotated[int, Field(strict=True, gt=0, le=99_999_999)]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http or https URL")
    return value


ReturnUrl = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2048), AfterValidator(_http_url)
]


class PackageIn(StrictInput):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    credits: Amount
    amount: MinorUnits
    currency: Currency
    active: bool = True


class PackageOut(ApiModel):
    id: str
    name: str
    credits: int
    amount: int = Field(description="price in the currency's minor units (cents)")
    currency: str
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class PackageList(ApiModel):
    items: list[PackageOut]


class CheckoutIn(StrictInput):
    package_id: PackageId
    success_url: ReturnUrl
    cancel_url: ReturnUrl


class PaymentOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    provider: str
    package_id: str
    credits: int = Field(description="credits sold (a snapshot taken at checkout)")
    amount: int
    currency: str
    status: Status
    checkout_url: str | None = None
    transaction_id: uuid.UUID | None = Field(
        default=None, description="the ledger transaction that granted the credits"
    )
    refunded_credits: int
    refunded_amount: int
    refund_shortfall: int = Field(description="credits a refund could not take back because they were spent")
    created_at: dt.datetime
    paid_at: dt.datetime | None = None


class CheckoutOut(PaymentOut):
    url: str = Field(description="the provider's hosted checkout page")


class PaymentPage(ApiModel):
    items: list[PaymentOut]
    next_cursor: str | None


class EventReceived(ApiModel):
    received: bool
    outcome: str = Field(description="granted, refunded, failed, duplicate, already_paid, ignored, unmatched, …")
