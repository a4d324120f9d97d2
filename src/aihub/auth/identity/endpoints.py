"""HTTP surface of email verification, password reset and Google sign-in (clients reach it
as /api/auth/...; the gateway strips the prefix)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.types import DecoratedCallable
from starlette.responses import RedirectResponse, Response

from aihub.auth import schemas as auth_schemas
from aihub.auth.identity import emails, oauth, schemas
from aihub.core.rbac.deps import CurrentUser
from aihub.kit.deps import RuntimeDep, TxDep, TxRoute
from aihub.kit.runtime import Runtime

router = APIRouter(tags=["identity"], route_class=TxRoute)

RedirectUri = Annotated[str, Query(alias="redirectUri", min_length=1, max_length=2048)]
_LIMITED = {"description": "RATE_LIMIT_EXCEEDED (with Retry-After)"}
_QUEUE = {"description": "JOB_QUEUE_UNAVAILABLE"}
_BAD_INPUT = {"description": "VALIDATION_ERROR"}
_NOT_JSON = {"description": "INVALID_JSON"}
_TOKEN = {"description": "UNAUTHORIZED / INVALID_TOKEN / TOKEN_EXPIRED / TOKEN_REVOKED"}
_USER_ONLY = {"description": "FORBIDDEN (a service token) / ACCOUNT_SUSPENDED"}
_OAUTH_DOWN = {"description": "OAUTH_NOT_CONFIGURED / OAUTH_PROVIDER_UNAVAILABLE / STORE_UNAVAILABLE"}


def _spends(
    path: str, model: type[Any], refused: str, more: dict[int, str] | None = None
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """A POST that spends a one-time token or code from its JSON body (a verification or reset
    link, the OAuth exchange code): 400 for the token's ``refused`` codes or a body that is not
    JSON, 422 for a body of the wrong shape, and ``more`` answers by status."""
    responses: dict[int | str, dict[str, Any]] = {400: {"description": f"{refused} / INVALID_JSON"}, 422: _BAD_INPUT}
    responses.update({status: {"description": text} for status, text in (more or {}).items()})
    return router.post(path, response_model=model, responses=dict(sorted(responses.items(), key=lambda i: str(i[0]))))


@router.post(
    "/verify-email/request",
    status_code=202,
    response_model=schemas.AcceptedOut,
    responses={
        401: _TOKEN,
        403: _USER_ONLY,
        409: {"description": "EMAIL_ALREADY_VERIFIED"},
        429: _LIMITED,
        503: {"description": "JOB_QUEUE_UNAVAILABLE / STORE_UNAVAILABLE"},
    },
)
async def request_verification(tx: TxDep, runtime: RuntimeDep, me: CurrentUser) -> schemas.AcceptedOut:
    """Mail the signed-in user a one-time verification link (valid 24 h; the email carries the
    bare token too). At most `AIHUB_IDENTITY_EMAIL_LIMIT` per account and window."""
    return await emails.request_verification(tx, runtime, me.user_id)


@_spends(
    "/verify-email",
    auth_schemas.UserEnvelope,
    "VERIFICATION_TOKEN_INVALID (unknown or used) / VERIFICATION_TOKEN_EXPIRED",
)
async def verify_email(body: schemas.VerifyEmailIn, tx: TxDep) -> auth_schemas.UserEnvelope:
    """Spend a verification token: the user who received it is now `verified: true`."""
    return await emails.verify_email(tx, body.token)


@router.post(
    "/password-reset/request",
    status_code=202,
    response_model=schemas.AcceptedOut,
    responses={400: _NOT_JSON, 422: _BAD_INPUT, 429: _LIMITED, 503: _QUEUE},
)
async def request_reset(body: schemas.ResetRequestIn, runtime: RuntimeDep) -> schemas.AcceptedOut:
    """Mail a password-reset link (valid 1 h) if an account has this email. The answer is the
    same 202 and body whether it has or not. Limited per email (here) and per client address
    (at the gateway)."""
    return await emails.request_reset(runtime, body.email)


@_spends(
    "/password-reset",
    auth_schemas.UserEnvelope,
    "RESET_TOKEN_INVALID (unknown or used) / RESET_TOKEN_EXPIRED",
    {403: "ACCOUNT_SUSPENDED"},
)
async def reset_password(body: schemas.ResetIn, tx: TxDep, runtime: RuntimeDep) -> auth_schemas.UserEnvelope:
    """Spend a reset token and set a new password (≥ 8 characters). Every session of the user
    ends: refresh tokens, Sora sessions, and access tokens issued before now."""
    return await emails.reset_password(tx, runtime, body.token, body.password)


def _cookie_path(runtime: Runtime) -> str:
    return urlsplit(runtime.settings.public_base_url).path.rstrip("/") + "/api/auth/oauth/google"


def _set_flow_cookie(response: Response, runtime: Runtime, value: str) -> None:
    response.set_cookie(
        oauth.COOKIE,
        value,
        max_age=oauth.STATE_TTL,
        path=_cookie_path(runtime),
        httponly=True,
        samesite="lax",  # sent on the provider's top-level redirect back, not on cross-site posts
        secure=oauth.cookie_secure(runtime),
    )


@router.get(
    "/oauth/google/start",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "To the provider's authorization endpoint"},
        400: {"description": "INVALID_REDIRECT_URI"},
        422: _BAD_INPUT,
        503: _OAUTH_DOWN,
    },
)
async def google_start(runtime: RuntimeDep, redirect_uri: RedirectUri) -> Response:
    """Begin Google sign-in: redirect to Google (state, nonce, PKCE S256). `redirectUri` must be
    one of `AIHUB_OAUTH_REDIRECT_URIS`; the browser comes back there with `?code=` (for
    `POST /oauth/exchange`) or `?error=`."""
    started = await oauth.start(runtime, redirect_uri=redirect_uri)
    response = RedirectResponse(started.url, status_code=302)
    _set_flow_cookie(response, runtime, started.browser_key)
    return response


@router.get(
    "/oauth/google/link/start",
    response_model=schemas.AuthorizationUrlOut,
    responses={
        400: {"description": "INVALID_REDIRECT_URI"},
        401: _TOKEN,
        403: _USER_ONLY,
        422: _BAD_INPUT,
        503: _OAUTH_DOWN,
    },
)
async def google_link_start(
    runtime: RuntimeDep, me: CurrentUser, redirect_uri: RedirectUri, response: Response
) -> schemas.AuthorizationUrlOut:
    """Link a Google account to the signed-in user: open `authorizationUrl` in the browser
    (which received the flow cookie with this answer); it comes back to `redirectUri` with
    `?linked=google` or `?error=`."""
    started = await oauth.start(runtime, redirect_uri=redirect_uri, link_user_id=me.user_id)
    _set_flow_cookie(response, runtime, started.browser_key)
    return schemas.AuthorizationUrlOut(authorization_url=started.url)


@router.get(
    "/oauth/google/callback",
    status_code=302,
    response_class=RedirectResponse,
    responses={
        302: {"description": "To the client's redirectUri with ?code=, ?linked=google or ?error="},
        400: {"description": "OAUTH_STATE_INVALID (unknown, expired, used, or another browser's)"},
        422: _BAD_INPUT,
        503: {"description": "STORE_UNAVAILABLE"},
    },
)
async def google_callback(
    request: Request,
    runtime: RuntimeDep,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=512)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Google sends the browser here. Errors after a valid state go back to the client as
    `?error=`: OAUTH_DENIED, OAUTH_PROVIDER_ERROR, INVALID_ID_TOKEN, EMAIL_NOT_VERIFIED,
    ACCOUNT_SUSPENDED, GOOGLE_ACCOUNT_IN_USE, GOOGLE_ACCOUNT_MISMATCH, OAUTH_EMAIL_MISSING,
    OAUTH_ACCOUNT_CONFLICT."""
    location = await oauth.callback(
        runtime,
        state=state,
        code=code,
        error=error,
        browser_key=request.cookies.get(oauth.COOKIE),
        request_id=getattr(request.state, "request_id", None),
        ip=request.client.host if request.client else None,
    )
    response = RedirectResponse(location, status_code=302)
    response.delete_cookie(
        oauth.COOKIE, path=_cookie_path(runtime), httponly=True, samesite="lax", secure=oauth.cookie_secure(runtime)
    )
    return response


@_spends(
    "/oauth/exchange",
    auth_schemas.TokenPair,
    "OAUTH_CODE_INVALID (unknown, expired after 60 s, or used)",
    {403: "ACCOUNT_SUSPENDED / EMAIL_NOT_VERIFIED", 503: "STORE_UNAVAILABLE"},
)
async def oauth_exchange(body: schemas.ExchangeIn, tx: TxDep, runtime: RuntimeDep) -> auth_schemas.TokenPair:
    """Spend the one-time code from the callback for the same body as `POST /login`."""
    return await oauth.exchange(tx, runtime, body.code)
