"""Webhook endpoints and deliveries over HTTP (camelCase outside)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from aihub.kit.schemas import ApiModel, StrictInput

EventType = Literal[
    "credits.low_balance",
    "payment.succeeded",
    "payment.refunded",
    "promo.exhausted",
    "usage.quota_reached",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2048)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]
Events = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]


class EndpointIn(StrictInput):
    url: Url
    events: Events
    description: Description | None = None
    active: bool = True


class EndpointPatch(StrictInput):
    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    active: bool | None = None


class EndpointOut(ApiModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None = None
    active: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class EndpointAudit(ApiModel):
    """An endpoint as its audit entries keep it (never its secret)."""

    url: str
    events: list[str]
    active: bool


class EndpointCreated(EndpointOut):
    secret: str = Field(description="`whsec_<base64>`: shown once, verify signatures with it")


class EndpointPage(ApiModel):
    items: list[EndpointOut]
    next_cursor: str | None


class AttemptOut(ApiModel):
    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    created_at: dt.datetime


class DeliveryOut(ApiModel):
    id: uuid.UUID
    webhook_id: str = Field(description="the `webhook-id` header of every attempt")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: dt.datetime | None = None
    created_at: dt.datetime
    delivered_at: dt.datetime | None = None
    payload: str = Field(description="the exact JSON body that is signed and sent")
    attempt_log: list[AttemptOut]


class DeliveryPage(ApiModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class TestOut(ApiModel):
    delivery_id: uuid.UUID
    webhook_id: str
    status: Literal["pending"]
