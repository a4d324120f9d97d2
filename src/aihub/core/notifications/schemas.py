"""Low-balance alert settings over HTTP."""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import AfterValidator, Field

from aihub.core.credits.schemas import Amount
from aihub.kit.schemas import ApiModel, StrictInput

MAX_THRESHOLDS = 10


def _distinct_desc(values: list[int]) -> list[int]:
    return sorted(set(values), reverse=True)


Thresholds = Annotated[list[Amount], Field(max_length=MAX_THRESHOLDS), AfterValidator(_distinct_desc)]


class AlertsIn(StrictInput):
    thresholds: Thresholds = Field(description="available-credit levels; each downward crossing emits one event")
    email: bool = Field(default=False, strict=True, description="also email the account's owner at each crossing")


class AlertsOut(ApiModel):
    user_id: uuid.UUID
    thresholds: list[int] = Field(description="highest first")
    email: bool
    inherited: bool = Field(description="true while the account follows the global AIHUB_LOW_BALANCE_THRESHOLD")
