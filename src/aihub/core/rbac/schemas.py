from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from pydantic import Field, StringConstraints

from aihub.kit.schemas import ApiModel, StrictInput

PermissionName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}:[a-z][a-z0-9-]{0,30}$", max_length=64)
]
RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{1,31}$")]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]


class RoleOut(ApiModel):
    name: str
    level: int
    description: str | None
    system: bool
    permissions: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class RoleList(ApiModel):
    items: list[RoleOut]
    next_cursor: str | None = None


class RoleCreate(StrictInput):
    name: RoleName
    level: int = Field(ge=0, le=99, description="0–99; admin alone sits at 100")
    description: Description | None = None
    permissions: list[PermissionName] = Field(default_factory=list, max_length=200)


class RoleUpdate(StrictInput):
    level: int | None = Field(default=None, ge=0, le=99)
    description: Description | None = None


class RolePermissionsBody(StrictInput):
    permissions: list[PermissionName] = Field(max_length=200)


class PermissionOut(ApiModel):
    name: str
    description: str | None
    created_at: dt.datetime


class PermissionList(ApiModel):
    items: list[PermissionOut]
    next_cursor: str | None = None


class PermissionCreate(StrictInput):
    name: PermissionName
    description: Description | None = None


class PermissionCheck(StrictInput):
    user_id: uuid.UUID | None = None
    permission: PermissionName


class PermissionCheckOut(ApiModel):
    allowed: bool
