"""Who is calling core or auth: a user by access token, a user by API key, or a service token.

The app hands :func:`authenticate` to the request plumbing (kit/deps.py ``Access``). Identity
comes only from a verified credential; headers such as ``X-User-Id`` (set by the gateway) are
never trusted here: the service verifies the caller itself (defence in depth).
"""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import Request

from aihub.core.apikeys import service as apikeys
from aihub.core.audit import service as audit
from aihub.core.rbac import service as rbac
from aihub.core.sessions import repository as sessions_repo
from aihub.kit import apikeys as kit_apikeys
from aihub.kit.db import Tx
from aihub.kit.deps import bearer_token
from aihub.kit.errors import AccountSuspended, StoreUnavailableError
from aihub.kit.jwt import Claims, InvalidToken, TokenRevoked, blacklist_key, family_blacklist_key, session_id
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot
from aihub.kit.store import SharedLookups, StoreUnavailable
from aihub.models import User

_LOOKUPS: Slot[SharedLookups] = Slot("callers.blacklist_lookups")


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
        raise kit_apikeys.KeyIpNotAllowed
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


def _service_principal(claims: Claims) -> rbac.Principal:
    return rbac.Principal(
        id=claims.sub,
        kind="service",
        email=None,
        effective=rbac.Effective(roles=("service",), level=-1, permissions=frozenset(claims.scopes)),
        jti=claims.jti,
        token_exp=claims.exp,
    )


async def _token_person(runtime: Runtime, tx: Tx, claims: Claims) -> rbac.Person:
    try:
        user_id = uuid.UUID(claims.sub)
    except ValueError as exc:
        raise InvalidToken from exc
    user = await tx.session.get(User, user_id)
    if user is None or user.status == "deleted":
        raise InvalidToken("The token's user does not exist")
    if user.status == "suspended":
        raise AccountSuspended
    if user.sessions_revoked_at is not None and await _issued_before(tx, claims, user.sessions_revoked_at):
        raise TokenRevoked  # issued before the user's sessions were ended (password reset)
    effective = await rbac.effective(tx, runtime.store, user_id, runtime.settings.permission_cache_ttl_seconds)
    return rbac.Person(
        id=str(user.id),
        kind="user",
        email=user.email,
        effective=effective,
        jti=claims.jti,
        token_exp=claims.exp,
        user=user,
    )


async def authenticate(request: Request, runtime: Runtime, tx: Tx) -> rbac.Principal:
    """The request's caller (kit/deps.py ``Authenticator``), refusing with one of
    ``AUTHENTICATION_ERRORS``; the audit log of this unit of work names it."""
    raw_key = presented_key(request)
    if raw_key is not None:
        return await key_principal(request, runtime, tx, raw_key)
    claims = await runtime.codec.verify_fresh(bearer_token(request))
    if await _revoked(runtime, claims):
        raise TokenRevoked
    principal = _service_principal(claims) if claims.typ == "service" else await _token_person(runtime, tx, claims)
    request.state.user_id = principal.id
    request.state.token_claims = claims  # auth's logout reads the session id (``sid``) from it
    audit.set_actor(tx, principal.actor())
    return principal
