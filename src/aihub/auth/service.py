"""Auth rules: registration, login with lockout, refresh rotation with reuse detection,
logout, service tokens. Services flush; the edge commits (see ``TxRoute``).

Nothing secret is ever logged or audited: audit rows carry ids, a family id and a reason,
never a password, a refresh token or a service token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
import uuid
from typing import Any, NoReturn

import structlog

from aihub.auth import repository as repo
from aihub.auth import tokens
from aihub.core.audit import service as audit
from aihub.core.deps import AccountSuspended
from aihub.core.rbac import repository as rbac_repo
from aihub.core.rbac import service as rbac
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, NotFound, StoreUnavailableError, ValidationFailed
from aihub.kit.jwt import InvalidToken, TokenExpired, TokenRevoked, blacklist_key
from aihub.kit.pagination import PageParams, page_of
from aihub.kit.passwords import hash_password, needs_rehash, verify_password
from aihub.kit.runtime import Runtime
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import ServiceToken, User

log = structlog.get_logger("aihub.auth")
ANONYMOUS = audit.Actor(id=None, type="anonymous")


class InvalidCredentials(AppError):
    status_code, code, message = 401, "INVALID_CREDENTIALS", "The email or password is wrong"
    keep_changes = True  # the failed attempt's audit row


class SuspendedLogin(AccountSuspended):
    keep_changes = True


class LoginLocked(AppError):
    status_code, code = 429, "TOO_MANY_LOGIN_ATTEMPTS"
    message = "Too many failed sign-in attempts for this account, try again later"
    keep_changes = True


class RefreshTokenReused(AppError):
    status_code, code = 401, "REFRESH_TOKEN_REUSED"
    message = "This refresh token was already used; every session of its family is revoked"
    keep_changes = True  # the family revocation must stick although the answer is 401


class RefreshRefused(InvalidToken):
    keep_changes = True  # a refresh for a suspended or deleted user revokes the family


class ServiceTokenNotFound(NotFound):
    code, message = "SERVICE_TOKEN_NOT_FOUND", "No such service token"


def _user_actor(user_id: uuid.UUID) -> audit.Actor:
    return audit.Actor(id=str(user_id), type="user")


# ---------------------------------------------------------------- blacklist


async def blacklist(store: Store, jti: str, exp: int | None) -> None:
    """``blacklist:{jti}`` lives as long as the token could: TTL = exp - now, none without exp."""
    ttl = None if exp is None else exp - time.time()
    if ttl is not None and ttl <= 0:
        return  # already expired: every verifier refuses it anyway
    try:
        await store.set(blacklist_key(jti), "1", ttl=ttl)
    except StoreUnavailable as exc:
        raise StoreUnavailableError from exc


# ---------------------------------------------------------------- register, login


async def register(tx: Tx, store: Store, *, email: str, password: str, display_name: str | None) -> dict[str, Any]:
    audit.set_actor(tx, ANONYMOUS)
    return await users.create(
        tx, store, None, email=email, password=password, display_name=display_name, action="auth.register"
    )


def _email_digest(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def _failures_key(email: str) -> str:
    # Hashed so that the store holds no email addresses.
    return "login:failures:" + _email_digest(email)


async def _count_attempt(runtime: Runtime, email: str) -> None:
    """Count this attempt first, verify second: parallel guesses cannot all slip under the limit."""
    settings = runtime.settings
    if settings.login_max_failures == 0:
        return
    key = _failures_key(email)
    try:
        attempts = await runtime.store.incr(key, ttl=settings.login_lockout_seconds)
        if attempts <= settings.login_max_failures:
            return
        wait = await runtime.store.ttl(key)
    except StoreUnavailable:
        # Fail open: a store outage must not lock every user out; argon2 still bounds guessing.
        log.warning("login_lockout_unavailable")
        return
    retry = max(1, int(wait if wait is not None else settings.login_lockout_seconds))
    raise LoginLocked(headers={"Retry-After": str(retry)}, details={"retryAfterSeconds": retry})


async def _forget_failures(store: Store, email: str) -> None:
    try:
        await store.delete(_failures_key(email))
    except StoreUnavailable:
        log.warning("login_lockout_unavailable")


async def _issue_pair(tx: Tx, runtime: Runtime, user: User, family_id: uuid.UUID) -> dict[str, Any]:
    roles = await rbac_repo.user_role_names(tx.session, user.id)
    refresh = tokens.new_refresh_token()
    await repo.add_refresh(
        tx.session,
        user_id=user.id,
        family_id=family_id,
        token_hash=tokens.hash_refresh_token(refresh),
        now=utcnow(),
        ttl=dt.timedelta(seconds=runtime.settings.refresh_token_ttl_seconds),
    )
    access = tokens.issue_access(runtime.codec, user_id=user.id, email=user.email, roles=roles, family_id=family_id)
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": runtime.codec.access_ttl,
        "user": users.view(user, roles),
    }


async def login(tx: Tx, runtime: Runtime, *, email: str, password: str) -> dict[str, Any]:
    email = email.strip().lower()
    # Failures name the account by a digest of the email: correlatable, not readable, and spread
    # over the audit chains instead of queueing every anonymous failure on one.
    attempt = ("login", _email_digest(email))
    try:
        await _count_attempt(runtime, email)
    except LoginLocked:
        audit.record(tx, "auth.login_failed", *attempt, after={"reason": "locked"}, actor=ANONYMOUS)
        raise
    user = await users_repo.by_email(tx.session, email)
    # Unknown email or not: one argon2 verification either way (a dummy hash when there is none).
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok or user.status == "deleted":
        if user is None:
            reason = {"reason": "unknown_email"}
            audit.record(tx, "auth.login_failed", *attempt, after=reason, actor=ANONYMOUS)
        else:
            audit.record(tx, "auth.login_failed", "user", user.id, after={"reason": "wrong_password"}, actor=ANONYMOUS)
        raise InvalidCredentials
    if user.status != "active":
        audit.record(tx, "auth.login_failed", "user", user.id, after={"reason": "suspended"}, actor=ANONYMOUS)
        raise SuspendedLogin
    await _forget_failures(runtime.store, email)
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
    family = uuid.uuid4()
    pair = await _issue_pair(tx, runtime, user, family)
    audit.record(tx, "auth.login", "user", user.id, after={"session": str(family)}, actor=_user_actor(user.id))
    return pair


# ---------------------------------------------------------------- refresh


async def _refuse_refresh(tx: Tx, digest: str, now: dt.datetime) -> NoReturn:
    """The token could not be spent: say why, and treat a second use as theft."""
    row = await repo.find_refresh(tx.session, digest)
    if row is None:
        raise InvalidToken("The refresh token is not valid")
    if row.used_at is not None:
        revoked = await repo.revoke_family(tx.session, row.family_id, now)
        audit.record(
            tx,
            "auth.refresh_reused",
            "user",
            row.user_id,
            after={"session": str(row.family_id), "revoked": revoked},
            actor=ANONYMOUS,
        )
        log.warning("refresh_token_reused", user_id=str(row.user_id), session=str(row.family_id))
        raise RefreshTokenReused
    if row.revoked_at is not None:
        raise TokenRevoked("The refresh token has been revoked")
    raise TokenExpired("The refresh token has expired")


async def refresh(tx: Tx, runtime: Runtime, *, refresh_token: str) -> dict[str, Any]:
    digest = tokens.hash_refresh_token(refresh_token)
    now = utcnow()
    spent = await repo.spend_refresh(tx.session, digest, now)
    if spent is None:
        await _refuse_refresh(tx, digest, now)
    user_id, family = spent
    user = await users_repo.get(tx.session, user_id)
    if user is None or user.status != "active":
        # Suspension revokes tokens already; this is the backstop for anything that slipped by.
        await repo.revoke_family(tx.session, family, now)
        audit.record(
            tx,
            "auth.refresh_refused",
            "user",
            user_id,
            after={"session": str(family), "status": user.status if user else None},
            actor=ANONYMOUS,
        )
        if user is not None and user.status == "suspended":
            raise SuspendedLogin
        raise RefreshRefused("The refresh token's user cannot sign in")
    pair = await _issue_pair(tx, runtime, user, family)
    audit.record(tx, "auth.refresh", "user", user.id, after={"session": str(family)}, actor=_user_actor(user.id))
    return pair


# ---------------------------------------------------------------- logout, me


async def logout(
    tx: Tx, runtime: Runtime, me: rbac.Principal, *, session_id: str | None, refresh_token: str | None
) -> None:
    """Blacklist the access token, revoke its refresh family (and the one of a given token)."""
    assert me.user_id is not None
    now = utcnow()
    await blacklist(runtime.store, me.jti, me.token_exp)
    families: set[uuid.UUID] = set()
    if session_id:
        # An sid we did not write is ignored; the access token is blacklisted all the same.
        with contextlib.suppress(ValueError):
            families.add(uuid.UUID(session_id))
    if refresh_token:
        row = await repo.find_refresh(tx.session, tokens.hash_refresh_token(refresh_token))
        if row is not None and row.user_id == me.user_id:  # never someone else's family
            families.add(row.family_id)
    revoked = 0
    for family in sorted(families):
        revoked += await repo.revoke_family_of_user(tx.session, family, me.user_id, now)
    audit.record(
        tx,
        "auth.logout",
        "user",
        me.user_id,
        after={"sessions": [str(f) for f in sorted(families)], "revoked": revoked},
    )


async def me(tx: Tx, store: Store, principal: rbac.Principal) -> dict[str, Any]:
    assert principal.user_id is not None
    perms = await users.effective_permissions(tx, store, principal.user_id)
    return {
        "user": await users.read(tx, principal.user_id),
        "roles": perms["roles"],
        "permissions": perms["permissions"],
    }


# ---------------------------------------------------------------- service tokens


def service_token_view(row: ServiceToken) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "scopes": list(row.scopes),
        "created_by": row.created_by,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
    }


async def create_service_token(
    tx: Tx,
    runtime: Runtime,
    actor: rbac.Principal,
    *,
    name: str,
    scopes: list[str],
    expires_in_days: int | None,
) -> dict[str, Any]:
    """Scopes must be real permissions the creator holds: no one mints more than they have."""
    wanted = await rbac.check_permissions_exist(tx, scopes)
    rbac.check_grantable(actor, wanted)
    limit = runtime.settings.service_token_max_days
    if expires_in_days is not None and expires_in_days > limit:
        raise ValidationFailed(
            details=[{"field": "body.expiresInDays", "message": f"at most {limit}", "type": "less_than_equal"}]
        )
    now = utcnow()
    issued = int(now.timestamp())  # JWT times are whole seconds; expiresAt matches exp exactly
    ttl = None if expires_in_days is None else expires_in_days * 86_400
    row = ServiceToken(
        id=uuid.uuid4(),
        name=name,
        scopes=wanted,
        jti=uuid.uuid4().hex,
        created_by=actor.user_id,
        created_at=now,
        expires_at=None if ttl is None else dt.datetime.fromtimestamp(issued + ttl, dt.UTC),
        revoked_at=None,
    )
    await repo.add_service_token(tx.session, row)
    token = runtime.codec.issue(
        sub=str(row.id),
        typ="service",
        role="service",
        roles=["service"],
        scopes=wanted,
        ttl=ttl,
        jti=row.jti,
        now=issued,
    )
    view = service_token_view(row)
    audit.record(tx, "service_token.create", "service_token", row.id, after=view)
    return {**view, "token": token}


async def list_service_tokens(tx: Tx, params: PageParams) -> dict[str, Any]:
    rows = await repo.fetch_service_tokens(tx.session, repo.list_service_tokens(params))
    items, cursor = page_of(rows, params, lambda r: (r.created_at, r.id))
    return {"items": [service_token_view(r) for r in items], "next_cursor": cursor}


async def revoke_service_token(tx: Tx, runtime: Runtime, token_id: uuid.UUID) -> None:
    row = await repo.get_service_token(tx.session, token_id, for_update=True)
    if row is None:
        raise ServiceTokenNotFound
    exp = None if row.expires_at is None else int(row.expires_at.timestamp())
    # Blacklist before the commit: if the store fails, nothing is recorded as revoked that is not.
    await blacklist(runtime.store, row.jti, exp)
    if row.revoked_at is None:
        before = service_token_view(row)
        row.revoked_at = utcnow()
        await tx.session.flush()
        audit.record(tx, "service_token.revoke", "service_token", row.id, before=before, after=service_token_view(row))
