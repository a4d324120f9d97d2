"""Dependencies shared by every core endpoint: the unit of work, the caller, permission checks.

Identity comes only from a verified token. Headers such as ``X-User-Id`` (set by the gateway)
are never trusted here: core verifies the JWT itself (defence in depth).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from aihub.core.apikeys import service as apikeys
from aihub.core.audit import service as audit
from aihub.core.credits import jobs as credit_jobs
from aihub.core.credits import service as credits_service
from aihub.core.rbac import service as rbac
from aihub.core.sessions import repository as sessions_repo
from aihub.kit import apikeys as kit_apikeys
from aihub.kit import fastlane
from aihub.kit.db import Tx
from aihub.kit.errors import AppError, Forbidden, StoreUnavailableError, Unauthorized
from aihub.kit.fastlane import Lane, LaneHandler
from aihub.kit.idempotency import IdempotentRequest, idempotent_request
from aihub.kit.inputs import refuse_bad_text
from aihub.kit.jwt import (
    Claims,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    blacklist_key,
    family_blacklist_key,
    session_id,
)
from aihub.kit.openapi import raises
from aihub.kit.routing import ApiRoute
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot
from aihub.kit.store import SharedLookups, StoreUnavailable
from aihub.models import User


class AccountSuspended(AppError):
    status_code, code, message = 403, "ACCOUNT_SUSPENDED", "This account is suspended"


# Every dependency here is `async def` on purpose: FastAPI runs plain `def` dependencies in a
# worker thread, and that hop cost ~0.4 ms per dependency per request in measurements.


class TxRoute(ApiRoute):
    """Commits the request's unit of work once the endpoint has produced its response.

    Commit happens before the response leaves, so a failed commit becomes an error response
    rather than a success the client was told about; anything else rolls back, except an
    ``AppError`` with ``keep_changes`` (the error is the outcome to record).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_commit(request: Request) -> Response:
            return await committed(request, handler)

        return with_commit


async def committed(request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
    """``handler``'s response with the request's unit of work (if it opened one) committed or
    rolled back as :class:`TxRoute` says; fast lanes (see :func:`lane`) run through it too."""
    try:
        response = await handler(request)
        tx: Tx | None = getattr(request.state, "tx", None)
        if tx is not None and response.status_code < 400:
            await tx.commit()
        return response
    except AppError as exc:
        tx = getattr(request.state, "tx", None)
        if exc.keep_changes and tx is not None:
            await tx.commit()
        raise
    finally:
        tx = getattr(request.state, "tx", None)
        if tx is not None:
            await tx.close()


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_tx(request: Request, runtime: RuntimeDep) -> Tx:
    existing: Tx | None = getattr(request.state, "tx", None)
    if existing is not None:
        return existing
    tx = runtime.tx(
        request_id=getattr(request.state, "request_id", None),
        ip=request.client.host if request.client else None,
    )
    # Every debit in this request (credits, usage, Sora) alerts on a low balance.
    tx.info.set(credits_service.POLICY, credit_jobs.policy(runtime))
    request.state.tx = tx
    return tx


TxDep = Annotated[Tx, Depends(get_tx)]


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("A bearer token is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("The Authorization header must be 'Bearer <token>'")
    return token.strip()


_LOOKUPS: Slot[SharedLookups] = Slot("deps.blacklist_lookups")


def _lookups(runtime: Runtime) -> SharedLookups:
    found = runtime.extras.get(_LOOKUPS)
    if found is None or found.store is not runtime.store:
        found = SharedLookups(runtime.store)
        runtime.extras.set(_LOOKUPS, found)
    return found


async def _revoked(runtime: Runtime, claims: Claims) -> bool:
    """The token itself, or its whole refresh family (reuse detected, password reset), is
    blacklisted: both keys in one store round trip, shared with the requests that arrived
    meanwhile (kit/store.py ``SharedLookups``: under load one MGET answers many requests)."""
    sid = session_id(claims)
    keys = (blacklist_key(claims.jti),) if sid is None else (blacklist_key(claims.jti), family_blacklist_key(sid))
    try:
        return await _lookups(runtime).exists(*keys)
    except StoreUnavailable as exc:
        # Without the blacklist we cannot tell a revoked token from a good one: refuse.
        raise StoreUnavailableError from exc


async def _issued_before(tx: Tx, claims: Claims, cutoff: dt.datetime) -> bool:
    """Whether the token predates ``cutoff``. ``iat`` has whole seconds: only a token of the
    cutoff's own second is ambiguous, and for it the start of its refresh family decides (one
    query, on that rare path only)."""
    second = int(cutoff.timestamp())
    if claims.iat != second:
        return claims.iat < second
    sid = session_id(claims)
    try:
        family = uuid.UUID(sid) if sid else None
    except ValueError:
        return True
    started = None if family is None else await sessions_repo.family_started_at(tx.session, family)
    return started is None or started <= cutoff


async def load_user(tx: Tx, user_id: uuid.UUID) -> User | None:
    return await tx.session.get(User, user_id)


def client_address(request: Request) -> str:
    """The caller's address: the peer, or, when the peer is a trusted proxy (uvicorn's
    ``FORWARDED_ALLOW_IPS``, loopback by default; the gateway's address in a deployment), the
    right-most address of ``X-Forwarded-For`` that it did not add itself. The gateway never
    passes a client's own ``X-Forwarded-For`` on unless that client is one of its trusted
    proxies, so this is the address the gateway saw."""
    return request.client.host if request.client else ""


def presented_key(request: Request) -> str | None:
    """An API key from ``X-API-Key`` or ``Authorization: Bearer ahk_…``; None for a JWT caller."""
    headers = request.headers
    return kit_apikeys.presented_key(
        headers.get("x-api-key"), kit_apikeys.bearer_credential(headers.get("authorization"))
    )


async def key_principal(request: Request, runtime: Runtime, tx: Tx, raw: str) -> rbac.Principal:
    """A key authenticates as its user, with that user's roles and permissions right now
    (checked here as well as at the gateway: defence in depth)."""
    key, user = await apikeys.verify(tx, raw)
    if user.status == "suspended":
        raise AccountSuspended
    if not apikeys.ip_allowed(key.allowed_ips, client_address(request)):
        raise apikeys.KeyIpNotAllowed
    effective = await rbac.effective(tx, runtime.store, user.id, runtime.settings.permission_cache_ttl_seconds)
    principal = rbac.Person(
        id=str(user.id),
        kind="user",
        email=user.email,
        effective=effective,
        jti=f"apikey:{key.id}",
        token_exp=None,
        user=user,
        api_key=key,
    )
    request.state.user_id = principal.id
    request.state.api_key_id = str(key.id)
    audit.set_actor(tx, principal.actor())
    return principal


@raises(
    Unauthorized,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    AccountSuspended,
    StoreUnavailableError,
    apikeys.InvalidApiKey,
    apikeys.KeyExpired,
    apikeys.KeyIpNotAllowed,
)
async def current_principal(request: Request, runtime: RuntimeDep, tx: TxDep) -> rbac.Principal:
    raw_key = presented_key(request)
    if raw_key is not None:
        return await key_principal(request, runtime, tx, raw_key)
    claims = await runtime.codec.verify_fresh(bearer_token(request))
    if await _revoked(runtime, claims):
        raise TokenRevoked
    if claims.typ == "service":
        perms = frozenset(claims.scopes)
        principal = rbac.Principal(
            id=claims.sub,
            kind="service",
            email=None,
            effective=rbac.Effective(roles=("service",), level=-1, permissions=perms),
            jti=claims.jti,
            token_exp=claims.exp,
        )
    else:
        try:
            user_id = uuid.UUID(claims.sub)
        except ValueError as exc:
            raise InvalidToken from exc
        user = await load_user(tx, user_id)
        if user is None or user.status == "deleted":
            raise InvalidToken("The token's user does not exist")
        if user.status == "suspended":
            raise AccountSuspended
        if user.sessions_revoked_at is not None and await _issued_before(tx, claims, user.sessions_revoked_at):
            raise TokenRevoked  # issued before the user's sessions were ended (password reset)
        effective = await rbac.effective(tx, runtime.store, user_id, runtime.settings.permission_cache_ttl_seconds)
        principal = rbac.Person(
            id=str(user.id),
            kind="user",
            email=user.email,
            effective=effective,
            jti=claims.jti,
            token_exp=claims.exp,
            user=user,
        )
    request.state.user_id = principal.id
    request.state.token_claims = claims  # auth's logout reads the session id (``sid``) from it
    audit.set_actor(tx, principal.actor())
    return principal


CurrentPrincipal = Annotated[rbac.Principal, Depends(current_principal)]


@raises(Forbidden)
async def current_user(principal: CurrentPrincipal) -> rbac.Person:
    """Endpoints about "me" need a person, not a service token."""
    if not isinstance(principal, rbac.Person):
        raise Forbidden("This endpoint needs a user token")
    return principal


CurrentUser = Annotated[rbac.Person, Depends(current_user)]


async def session_user(principal: CurrentUser) -> rbac.Person:
    """A person signed in with an access token: an API key cannot log out a session (it has
    none) or mint service tokens."""
    if principal.api_key is not None:
        raise Forbidden("This endpoint needs a user access token, not an API key")
    return principal


SessionUser = Annotated[rbac.Person, Depends(session_user)]


def RequirePermission(permission: str) -> Any:
    async def check(principal: CurrentPrincipal) -> rbac.Principal:
        principal.require(permission)
        return principal

    check.__name__ = f"require_{permission.replace(':', '_').replace('-', '_')}"
    return Depends(raises(Forbidden)(check))


# ---------------------------------------------------------------------- fast lanes


@dataclass(frozen=True, slots=True)
class Solved:
    """What a fast lane's route asks for, solved as FastAPI solves the route's dependencies."""

    request: Request
    runtime: Runtime
    tx: Tx
    principal: rbac.Principal
    body: Any
    idem: IdempotentRequest | None
    response: Response  # the endpoint's ``Response`` parameter (headers, status)


def lane(
    runtime: Runtime,
    method: str,
    path: str,
    *,
    permission: str,
    idempotent: bool,
    call: Callable[[Solved], Awaitable[Any]],
) -> Lane:
    """A fast lane for a core route whose dependencies are the unit of work,
    ``RequirePermission(permission)`` and (``idempotent``) ``idempotent_request``, plus one
    body model: the same steps in FastAPI's order, the same functions where they exist
    (``refuse_bad_text``, ``get_tx``, ``current_principal``, ``idempotent_request``, the
    endpoint through ``call``), and :func:`committed` around them as :class:`TxRoute`."""

    def make(route: APIRoute) -> LaneHandler:
        async def solve(request: Request) -> Response:
            raw = await fastlane.json_body(request)  # before any dependency, as FastAPI reads it
            await refuse_bad_text(request)  # the app-wide dependency, first
            tx = await get_tx(request, runtime)
            principal = await current_principal(request, runtime, tx)
            principal.require(permission)
            errors: list[Any] = []
            idem: IdempotentRequest | None = None
            if idempotent:
                idem, idem_errors = await fastlane.call_dependency(request, idempotent_request)
                errors += idem_errors
            body, body_errors = await fastlane.validate_body(route, raw)
            errors += body_errors
            if errors:
                raise RequestValidationError(errors, body=None if raw is fastlane.Undefined else raw)
            sub = fastlane.sub_response()
            result = await call(Solved(request, runtime, tx, principal, body, idem, sub))
            return await fastlane.respond(route, result, sub)

        async def handler(request: Request) -> Response:
            return await committed(request, solve)

        return handler

    return Lane(method, path, make)
