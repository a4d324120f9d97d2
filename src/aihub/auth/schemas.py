from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from aihub.core.users.schemas import DisplayName, Email, Password, UserOut
from aihub.kit.schemas import ApiModel, StrictInput

# Login accepts any stored password, so only bounds are checked here (argon2 input stays small).
LoginPassword = Annotated[str, StringConstraints(min_length=1, max_length=256)]
OpaqueToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Scope = Annotated[str, StringConstraints(min_length=3, max_length=64)]
TokenName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class RegisterIn(StrictInput):
    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginIn(StrictInput):
    email: Email
    password: LoginPassword


class RefreshIn(StrictInput):
    refresh_token: OpaqueToken


class LogoutIn(StrictInput):
    refresh_token: OpaqueToken | None = None


class UserEnvelope(ApiModel):
    user: UserOut


class TokenPair(ApiModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")
    user: UserOut


class MeOut(ApiModel):
    user: UserOut
    roles: list[str]
    permissions: list[str]


class ServiceTokenIn(StrictInput):
    name: TokenName
    scopes: list[Scope] = Field(min_length=1, max_length=50)
    expires_in_days: int | None = Field(default=None, ge=1)


class ServiceTokenOut(ApiModel):
    id: uuid.UUID
    name: str
    scopes: list[str]
    created_by: uuid.UUID | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


class ServiceTokenCreated(ServiceTokenOut):
    token: str = Field(description="The token itself; shown once, never stored")


class ServiceTokenPage(ApiModel):
    items: list[ServiceTokenOut]
    next_cursor: str | None


class Jwk(ApiModel):
    kty: str
    kid: str
    alg: str
    use: str
    n: str | None = None
    e: str | None = None
    crv: str | None = None
    x: str | None = None


class JwksOut(ApiModel):
    keys: list[Jwk]
