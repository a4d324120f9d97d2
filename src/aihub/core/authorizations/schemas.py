from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator

from aihub.core.usage.schemas import MAX_METADATA_BYTES, MAX_TOKENS
from aihub.kit.jsonutil import dumps
from aihub.kit.schemas import ApiModel, StrictInput

MAX_TTL_SECONDS = 86_400
DEFAULT_TTL_SECONDS = 600
Tokens = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKENS)]


class AuthorizationIn(StrictInput):
    user_id: uuid.UUID | None = None
    provider: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    model: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
    max_input_tokens: Tokens
    max_output_tokens: Tokens
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_TTL_SECONDS)] | None = None


class SettleIn(StrictInput):
    request_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    input_tokens: Tokens
    output_tokens: Tokens
    duration_seconds: Decimal | None = Field(default=None, ge=0, le=86_400, max_digits=12, decimal_places=3)
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value


class AuthorizationOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    provider: str
    model: str
    max_input_tokens: int
    max_output_tokens: int
    held_credits: int
    status: Literal["active", "settled", "cancelled", "expired"]
    usage_event_id: uuid.UUID | None
    expires_at: dt.datetime
    created_at: dt.datetime
    resolved_at: dt.datetime | None


class SettleOut(ApiModel):
    id: uuid.UUID = Field(description="The usage event recorded")
    authorization_id: uuid.UUID
    request_id: str
    credits: int = Field(description="What was charged: the actual cost, never more than was held")
    balance: int
    overrun: bool = Field(description="True when the actual cost was above the hold (and was capped to it)")
