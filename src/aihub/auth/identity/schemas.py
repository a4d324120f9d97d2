from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from aihub.core.users.schemas import Email, Password
from aihub.kit.schemas import ApiModel, StrictInput

# Our tokens are 43 characters; the bound only keeps junk small.
MailedToken = Annotated[str, StringConstraints(min_length=1, max_length=256)]
OAuthCode = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class VerifyEmailIn(StrictInput):
    token: MailedToken


class ResetRequestIn(StrictInput):
    email: Email


class ResetIn(StrictInput):
    token: MailedToken
    password: Password


class ExchangeIn(StrictInput):
    code: OAuthCode


class AcceptedOut(ApiModel):
    status: Literal["accepted"] = "accepted"
    message: str


class AuthorizationUrlOut(ApiModel):
    authorization_url: str = Field(description="Send the browser here; it comes back to the redirectUri")
