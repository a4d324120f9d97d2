from __future__ import annotations

import datetime as dt
import ipaddress
import re
import uuid
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from aihub.kit.inputs import Timestamp
from aihub.kit.schemas import ApiModel, StrictInput

# "provider/model" or "provider/*": the same characters a usage report's provider and model allow.
MODEL_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}/(\*|[A-Za-z0-9][A-Za-z0-9._:@-]{0,127})$")
ModelRule = Annotated[str, StringConstraints(max_length=200)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Cidr = Annotated[str, StringConstraints(max_length=64)]
PerMinute = Annotated[int, Field(strict=True, ge=1, le=1_000_000_000)]


class BudgetIn(StrictInput):
    max_credits: Annotated[int, Field(strict=True, ge=0, le=10**15)]
    period: Literal["day", "month", "total"]


def _models(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    for item in value:
        if not MODEL_PATTERN.match(item):
            raise ValueError(f"{item!r} is not 'provider/model' or 'provider/*'")
    return sorted(set(value))


def _networks(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from exc
    return sorted(set(out))


class _Rules(StrictInput):
    expires_at: Timestamp | None = None
    models: Annotated[list[ModelRule], Field(max_length=100)] | None = None
    allowed_ips: Annotated[list[Cidr], Field(max_length=100)] | None = None
    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    budget: BudgetIn | None = None

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str] | None) -> list[str] | None:
        return _models(value)

    @field_validator("allowed_ips")
    @classmethod
    def _check_ips(cls, value: list[str] | None) -> list[str] | None:
        return _networks(value)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expiresAt needs a time zone (RFC 3339)")
        return value


class KeyIn(_Rules):
    name: Name
    user_id: uuid.UUID | None = None


class KeyPatch(_Rules):
    """Every field optional; an explicit null lifts that restriction (within the caller's own)."""

    name: Name | None = None


class BudgetOut(ApiModel):
    max_credits: int
    period: Literal["day", "month", "total"]
    used: int
    resets_at: dt.datetime | None


class KeyOut(ApiModel):
    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    prefix: str
    models: list[str] | None
    allowed_ips: list[str] | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget: BudgetOut | None
    status: Literal["active", "expired", "revoked"]
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown only in this answer, stored only as a hash")


class BudgetAudit(ApiModel):
    max_credits: int
    period: str | None


class KeyAudit(ApiModel):
    """A key as its audit entries keep it (camelCase, times as ISO 8601 text): never the key
    or its hash."""

    name: str
    user_id: str
    prefix: str
    models: list[str] | None
    allowed_ips: list[str] | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget: BudgetAudit | None
    expires_at: str | None
    revoked_at: str | None


class KeyPage(ApiModel):
    items: list[KeyOut]
    next_cursor: str | None


class KeyIdentity(ApiModel):
    """What the gateway needs to admit a key (GET /api/keys/current, authenticated by the key)."""

    id: uuid.UUID
    user_id: uuid.UUID
    role: str
    roles: list[str]
    permissions: list[str]
    expires_at: dt.datetime | None
    allowed_ips: list[str] | None
    requests_per_minute: int | None
