from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Self

from pydantic import Field, StringConstraints, model_validator

from aihub.kit.inputs import Timestamp
from aihub.kit.schemas import ApiModel, StrictInput

MAX_CREDITS = 10**12
MAX_BATCH = 1_000

# Admin-chosen codes: letters, digits, dash and underscore; stored upper case.
GivenCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")]
Prefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,16}$")]
# What a user types: anything short; normalisation and the lookup decide.
TypedCode = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Credits = Annotated[int, Field(gt=0, le=MAX_CREDITS)]
MaxRedemptions = Annotated[int, Field(ge=1, le=10**12)]
PerUserLimit = Annotated[int, Field(ge=1, le=1_000)]
Description = Annotated[str, StringConstraints(max_length=500)]


def _check_window(starts_at: dt.datetime | None, expires_at: dt.datetime | None) -> None:
    if starts_at is not None and expires_at is not None and expires_at <= starts_at:
        raise ValueError("expiresAt must be after startsAt")


class PromoTerms(StrictInput):
    credits: Credits
    max_redemptions: MaxRedemptions | None = None
    per_user_limit: PerUserLimit = 1
    starts_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _window(self) -> Self:
        _check_window(self.starts_at, self.expires_at)
        return self


class PromoIn(PromoTerms):
    code: GivenCode | None = None


class PromoBatchIn(PromoTerms):
    count: int = Field(ge=1, le=MAX_BATCH)
    prefix: Prefix | None = None


class PromoPatch(StrictInput):
    """Only the fields sent change; ``null`` clears a limit or a date."""

    active: bool | None = None
    max_redemptions: MaxRedemptions | None = None
    starts_at: Timestamp | None = None
    expires_at: Timestamp | None = None
    description: Description | None = None

    @model_validator(mode="after")
    def _window(self) -> Self:
        if "active" in self.model_fields_set and self.active is None:
            raise ValueError("active must be true or false")
        _check_window(self.starts_at, self.expires_at)
        return self


class RedeemIn(StrictInput):
    code: TypedCode


class PromoOut(ApiModel):
    id: uuid.UUID
    code: str
    credits: int
    max_redemptions: int | None
    per_user_limit: int
    starts_at: dt.datetime | None
    expires_at: dt.datetime | None
    active: bool
    description: str | None
    created_by: str | None
    redeemed_count: int
    credits_granted: int
    created_at: dt.datetime
    updated_at: dt.datetime


class PromoPage(ApiModel):
    items: list[PromoOut]
    next_cursor: str | None


class PromoBatchOut(ApiModel):
    items: list[PromoOut]


class RedemptionOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    email: str | None
    credits: int
    transaction_id: uuid.UUID
    created_at: dt.datetime


class RedemptionPage(ApiModel):
    items: list[RedemptionOut]
    next_cursor: str | None


class RedeemOut(ApiModel):
    code: str
    credits: int
    balance: int
    transaction_id: uuid.UUID
