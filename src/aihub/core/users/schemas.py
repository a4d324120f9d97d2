from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from aihub.kit.schemas import ApiModel, StrictInput

Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]
DisplayName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
RoleName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]


class UserOut(ApiModel):
    id: uuid.UUID
    email: str
    display_name: str | None
    verified: bool
    status: Literal["active", "suspended", "deleted"]
    roles: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime


class UserPage(ApiModel):
    items: list[UserOut]
    next_cursor: str | None


class UserCreate(StrictInput):
    email: Email
    password: Password | None = None
    display_name: DisplayName | None = None
    roles: list[RoleName] | None = Field(default=None, max_length=20)
    verified: bool = False


class MeUpdate(StrictInput):
    display_name: DisplayName | None = None
    password: Password | None = None
    current_password: str | None = Field(default=None, max_length=256)


class UserUpdate(StrictInput):
    display_name: DisplayName | None = None
    email: Email | None = None
    verified: bool | None = None
    status: Literal["active", "suspended"] | None = None


class RolesBody(StrictInput):
    roles: list[RoleName] = Field(max_length=20)


class RolesOut(ApiModel):
    user_id: uuid.UUID
    roles: list[str]


class PermissionsOut(ApiModel):
    user_id: uuid.UUID
    roles: list[str]
    permissions: list[str]
    grants: list[str]


class GrantBody(StrictInput):
    permission: Annotated[str, StringConstraints(min_length=3, max_length=64)]
