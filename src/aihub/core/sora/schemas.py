from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, PlainSerializer, StringConstraints

from aihub.kit.schemas import ApiModel, StrictInput

Seconds = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
Resolution = Literal["480p", "720p", "1080p"]
DurationIn = Annotated[Decimal, Field(gt=0, le=600, max_digits=8, decimal_places=3, description="Seconds of video")]


class SessionCreated(ApiModel):
    id: uuid.UUID
    session_token: str = Field(description="Shown once: paste it into the video tool")
    expires_at: dt.datetime
    created_at: dt.datetime


class SessionOut(ApiModel):
    id: uuid.UUID
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class SessionList(ApiModel):
    items: list[SessionOut]
    next_cursor: str | None = None


class SessionUser(ApiModel):
    id: uuid.UUID
    email: str


class SessionInfo(ApiModel):
    user: SessionUser
    expires_at: dt.datetime
    balance: int
    available: int


class CheckIn(StrictInput):
    duration_seconds: DurationIn
    resolution: Resolution = "720p"


class CheckOut(ApiModel):
    sufficient: bool
    cost: int
    balance: int
    available: int


class GenerationIn(StrictInput):
    duration_seconds: DurationIn
    resolution: Resolution = "720p"
    prompt: Annotated[str, StringConstraints(max_length=4_000)] | None = None


class GenerationOut(ApiModel):
    id: uuid.UUID
    hold_id: uuid.UUID
    cost: int
    charged: int | None
    status: Literal["pending", "completed", "failed", "expired"]
    duration_seconds: Seconds
    resolution: str
    created_at: dt.datetime
    expires_at: dt.datetime
    resolved_at: dt.datetime | None


class CompleteIn(StrictInput):
    actual_seconds: Annotated[Decimal, Field(ge=0, le=600, max_digits=8, decimal_places=3)] | None = None


class FailIn(StrictInput):
    reason: Annotated[str, StringConstraints(max_length=500)] | None = None


class Resolved(ApiModel):
    id: uuid.UUID
    status: Literal["completed", "failed"]
    charged: int
    balance: int
