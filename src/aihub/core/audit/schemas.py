from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import Field

from aihub.kit.schemas import ApiModel


class AuditOut(ApiModel):
    id: uuid.UUID
    actor_id: str | None
    actor_type: str
    action: str
    entity_type: str
    entity_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip: str | None
    created_at: dt.datetime
    hash: str


class AuditPage(ApiModel):
    items: list[AuditOut]
    next_cursor: str | None


class VerifyOut(ApiModel):
    valid: bool
    checked: int
    first_broken_id: str | None = None
    broken_ids: list[str] = Field(
        default_factory=list, description="every broken row found (at most 1000 listed), in chain order"
    )
    broken_count: int = Field(default=0, description="how many breaks were found in all")
