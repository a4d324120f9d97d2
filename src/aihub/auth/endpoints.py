"""The auth service's HTTP surface (clients reach it as /api/auth/*; the gateway strips the prefix)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from aihub.auth import outbox, schemas, tokens
from aihub.auth import service as auth
from aihub.core.rbac import service as rbac
from aihub.core.rbac.deps import CurrentUser, SessionUser
from aihub.core.rbac.service import Principal
from aihub.core.sessions.lockout import LoginLocked
from aihub.core.users import service as users
from aihub.core.users.schemas import UserOut
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.errors import AccountSuspended, StoreUnavailableError
from aihub.kit.jwt import InvalidToken, TokenExpired, TokenRevoked
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params
from aihub.models import ServiceToken

router = APIRouter(tags=["auth"], route_class=TxRoute)


@router.post(
    "/register",
    response_model=schemas.UserEnvelope,
    status_code=201,
    responses=errors(users.EmailTaken, users.InvalidEmail),
)
async def register(body: schemas.RegisterIn, tx: TxDep, runtime: RuntimeDep) -> dict[str, UserOut]:
    """Create an account with role `user` and an empty credit account, and mail it a
    verification link. 409 `EMAIL_TAKEN`."""
    user = await auth.register(
        tx, runtime.store, email=body.email, password=body.password, display_name=body.display_name
    )
    outbox.send_verification_after_commit(tx, runtime, user.id)  # after the commit
    return {"user": user}


@router.post(
    "/login",
    response_model=schemas.TokenPair,
    responses=errors(auth.InvalidCredentials, auth.SuspendedLogin, LoginLocked),
)
async def login(body: schemas.LoginIn, tx: TxDep, runtime: RuntimeDep) -> schemas.TokenPair:
    """Exchange email and password for an access token and a refresh token.

    401 `INVALID_CREDENTIALS` alike for an unknown email and a wrong password; 403
    `ACCOUNT_SUSPENDED`; 403 `EMAIL_NOT_VERIFIED` while `AIHUB_REQUIRE_VERIFIED_EMAIL` is on and
    the email is unverified (a fresh verification link is mailed); 429 `TOO_MANY_LOGIN_ATTEMPTS`
    (with `Retry-After`) after `AIHUB_LOGIN_MAX_FAILURES` attempts for one account within `AIHUB_LOGIN_LOCKOUT_SECONDS`.
    """
    return await auth.login(tx, runtime, email=body.email, password=body.password)


@router.post(
    "/refresh",
    response_model=schemas.TokenPair,
    responses=errors(
        InvalidToken, TokenExpired, TokenRevoked, auth.RefreshTokenReused, AccountSuspended, StoreUnavailableError
    ),
)
async def refresh(body: schemas.RefreshIn, tx: TxDep, runtime: RuntimeDep) -> schemas.TokenPair:
    """Spend a refresh token for a new pair.

    Within `AIHUB_REFRESH_REUSE_GRACE_SECONDS` (default 10) of its rotation, the spent token
    returns the same new pair again (two tabs refreshing at once both stay signed in). Presented
    after that, it is taken for stolen: the whole family is revoked, its refresh tokens and the
    access tokens it issued, and the answer is 401 `REFRESH_TOKEN_REUSED`. 401 `TOKEN_REVOKED`
    or `TOKEN_EXPIRED` for a revoked or expired token, `INVALID_TOKEN` for an unknown one."""
    return await auth.refresh(tx, runtime, refresh_token=body.refresh_token)


@router.post("/logout", status_code=204, responses=errors(StoreUnavailableError))
async def logout(
    request: Request, tx: TxDep, runtime: RuntimeDep, me: SessionUser, body: schemas.LogoutIn | None = None
) -> Response:
    """Blacklist the access token's `jti` and revoke its refresh family (and the given token's),
    together with every other access token those families issued."""
    claims = getattr(request.state, "token_claims", None)
    sid = claims.raw.get("sid") if claims is not None else None
    await auth.logout(
        tx,
        runtime,
        me,
        session_id=sid if isinstance(sid, str) else None,
        refresh_token=body.refresh_token if body else None,
    )
    return Response(status_code=204)


@router.get("/me", response_model=schemas.MeOut)
async def read_me(tx: TxDep, runtime: RuntimeDep, me: CurrentUser) -> schemas.MeOut:
    """The caller's profile, roles and effective permissions (`*` for admin)."""
    return await auth.me(tx, runtime.store, me)


ServiceTokenAdmin = Annotated[Principal, RequirePermission("service-tokens:write")]


@router.post(
    "/service-tokens",
    response_model=schemas.ServiceTokenCreated,
    status_code=201,
    responses=errors(rbac.UnknownPermissions),
)
async def create_service_token(
    body: schemas.ServiceTokenIn, tx: TxDep, runtime: RuntimeDep, actor: ServiceTokenAdmin, _: SessionUser
) -> schemas.ServiceTokenCreated:
    """Mint a service token (`typ=service`) whose scopes are permissions; the token is shown once."""
    return await auth.create_service_token(
        tx, runtime, actor, name=body.name, scopes=body.scopes, expires_in_days=body.expires_in_days
    )


@router.get("/service-tokens", response_model=schemas.ServiceTokenPage)
async def list_service_tokens(
    tx: TxDep, _: ServiceTokenAdmin, page: Annotated[PageParams, Depends(page_params)]
) -> Paged[ServiceToken]:
    """Service tokens, newest first, without their values."""
    return await auth.list_service_tokens(tx, page)


@router.delete(
    "/service-tokens/{token_id}",
    status_code=204,
    responses=errors(auth.ServiceTokenNotFound, StoreUnavailableError),
)
async def revoke_service_token(token_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, _: ServiceTokenAdmin) -> Response:
    """Revoke: the token's `jti` is blacklisted, so every service refuses it (`TOKEN_REVOKED`)."""
    await auth.revoke_service_token(tx, runtime, token_id)
    return Response(status_code=204)


@router.get("/.well-known/jwks.json", response_model=schemas.JwksOut, response_model_exclude_none=True)
async def jwks(runtime: RuntimeDep, response: Response) -> schemas.JwksOut:
    """Public keys that verify our tokens (empty while tokens are signed with HS256 only)."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return tokens.jwks(runtime.codec)
