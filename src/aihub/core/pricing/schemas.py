from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer

from aihub.kit.schemas import ApiModel, StrictInput

# Prices are exact decimals inside; on the wire they are JSON numbers (at most 6 decimals).
Credits = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
# At most 10^6 credits (USD 1,000) per unit: with at most 10^12 tokens of each kind and 86,400
# seconds per call, no charge can come near BIGINT (see pricing.service.credits_for).
MAX_PRICE = 10**6
PriceIn = Annotated[Decimal, Field(ge=0, le=MAX_PRICE, max_digits=13, decimal_places=6)]


class PriceOut(ApiModel):
    id: uuid.UUID
    provider: str
    model: str
    input_per_1k: Credits
    output_per_1k: Credits
    per_request: Credits
    per_second: Credits
    effective_from: dt.datetime
    effective_to: dt.datetime | None


class PriceList(ApiModel):
    items: list[PriceOut]
    next_cursor: str | None = None


class PriceBody(StrictInput):
    input_per_1k: PriceIn = Field(description="Credits per 1,000 input tokens")
    output_per_1k: PriceIn = Field(description="Credits per 1,000 output tokens")
    per_request: PriceIn = Field(default=Decimal(0), description="Credits per request")
    per_second: PriceIn = Field(default=Decimal(0), description="Credits per second (video)")
