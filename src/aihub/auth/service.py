"""Auth rules: registration, login with lockout, refresh rotation with reuse detection,
logout, service tokens. Services flush; the edge commits (see ``TxRoute``).

Nothing secret is ever logged or audited: audit rows carry ids, a family id and a reason,
never a password, a refresh token or a service token.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aihub.auth import outbox, tokens
from aihub.auth.schemas import MeOut, ServiceTokenCreated, TokenPair
from aihub.core.audit import service as audit
from aihub.core.rbac import repository as rbac_repo
from aihub.core.rbac import service as rbac
from aihub.core.sessions import repository as repo
from aihub.core.sessions.lockout import LoginLocked, count_attempt, email_digest, forget_failures
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.core.users.schemas import UserOut
from aihub.kit.db import Tx, as_utc, utcnow
from aihub.kit.errors import AccountSuspended, AppError, NotFound, StoreUnavailableError, ValidationFailed
from aihub.kit.jsonutil import dumps, loads
from aihub.kit.jwt import InvalidToken, TokenExpired, TokenRevoked, blacklist_key, family_blacklist_key
from aihub.kit.pagination import Paged, PageParams, paged
from aihub.kit.passwords import hash_password, needs_rehash, verify_password
from aihub.kit.runtime import Runtime
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import RefreshToken, ServiceToken, User

log = structlog.get_logger("aihub.auth")
ANONYMOUS = audit.Actor(id=None, type="anonymous")


class InvalidCredentials(AppError):
    status_code, code, message = 401, "INVALID_CREDENTIALS", "The email or password is wrong"
    keep_changes = True  # the failed attempt's audit row


class SuspendedLogin(AccountSuspended):
    keep_changes = True


class EmailNotVerified(AppError):
    status_code, code = 403, "EMAIL_NOT_VERIFIED"
    message = "Verify your email address before signing in (see the email we sent, or ask for a new one)"
    keep_changes = True  # the refused attempt's audit row


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


async def register(tx: Tx, store: Store, *, email: str, password: str, display_name: str | None) -> UserOut:
    audit.set_actor(tx, ANONYMOUS)
    return await users.create(
        tx, store, None, email=email, password=password, display_name=display_name, action="auth.register"
    )


def _pair(access: str, refresh: str, expires_in: int, user: UserOut) -> TokenPair:
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=expires_in, user=user)


async def _issue_pair(tx: Tx, runtime: Runtime, user: User, family_id: uuid.UUID) -> TokenPair:
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
    return _pair(access, refresh, runtime.codec.access_ttl, users.profile(user, roles))


async def login(tx: Tx, runtime: Runtime, *, email: str, password: str) -> TokenPair:
    email = email.strip().lower()
    # Failures name the account by a digest of the email: correlatable, not readable, and spread
    # over the audit chains instead of queueing every anonymous failure on one.
    attempt = ("login", email_digest(email))
    try:
        await count_attempt(runtime, email)
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
    if runtime.settings.require_verified_email and not user.verified:
        audit.record(tx, "auth.login_failed", "user", user.id, after={"reason": "email_not_verified"}, actor=ANONYMOUS)
        # The password was right: mail a fresh link, since this user cannot sign in to ask for one.
        outbox.send_verification_after_commit(tx, runtime, user.id, limited=True)
        raise EmailNotVerified
    await forget_failures(runtime.store, email)
    if user.password_hash and needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
    family = uuid.uuid4()
    pair = await _issue_pair(tx, runtime, user, family)
    audit.record(tx, "auth.login", "user", user.id, after={"session": str(family)}, actor=_user_actor(user.id))
    return pair


# ---------------------------------------------------------------- refresh


async def blacklist_families(runtime: Runtime, families: Iterable[uuid.UUID]) -> None:
    """Revoke every access token of these refresh families (their ``sid`` claim): the entry
    lives as long as the family's newest access token can (access lifetime + leeway)."""
    ttl = runtime.codec.access_ttl + runtime.codec.leeway + 1
    try:
        for family in families:
            await runtime.store.set(family_blacklist_key(str(family)), "1", ttl=ttl)
    except StoreUnavailable as exc:
        raise StoreUnavailableError from exc


async def _revoke_reused_family(tx: Tx, runtime: Runtime, family: uuid.UUID, now: dt.datetime) -> int:
    """Theft is assumed: the family's refresh tokens AND its access tokens stop working."""
    revoked = await repo.revoke_family(tx.session, family, now)
    try:
        await blacklist_families(runtime, [family])
    except StoreUnavailableError:
        # The refresh tokens are revoked all the same (the 401 commits that); the access tokens
        # then live until they expire, which is what they did before this was possible.
        log.error("refresh_family_blacklist_unavailable", session=str(family))
    return revoked


# Two tabs refreshing at once send the same refresh token; the one that loses the race must
# get the pair the winner got, not a logout. The winner leaves that pair in the store for the
# grace period, under a digest of the spent token and sealed with a key derived from the token
# itself: the store alone (a dump, a replica) yields no usable token.


def _grace_key(digest: str) -> str:
    return f"refresh:grace:{digest}"


def _grace_cipher(refresh_token: str) -> AESGCM:
    return AESGCM(hashlib.sha256(b"aihub-refresh-grace:" + refresh_token.encode()).digest())


@dataclass(frozen=True, slots=True)
class _Remembered:
    """A rotated pair as kept for the grace period (``exp``: the access token's expiry)."""

    access: str
    refresh: str
    exp: int | None


async def _remember_for_grace(runtime: Runtime, digest: str, spent: str, pair: TokenPair) -> None:
    grace = runtime.settings.refresh_reuse_grace_seconds
    if grace <= 0:
        return
    exp = runtime.codec.verify(pair.access_token).exp
    plain = dumps({"access": pair.access_token, "refresh": pair.refresh_token, "exp": exp})
    nonce = secrets.token_bytes(12)
    sealed = base64.b64encode(nonce + _grace_cipher(spent).encrypt(nonce, plain, None)).decode()
    try:
        # Written before the commit: a racing request waits on the token's row lock until this
        # one commits, so whenever it finds the token spent, the pair is already here.
        await runtime.store.set(_grace_key(digest), sealed, ttl=grace)
    except StoreUnavailable:
        log.warning("refresh_grace_unavailable")  # no grace then; a racing tab signs in again


async def _recall_from_grace(runtime: Runtime, digest: str, spent: str) -> _Remembered | None:
    try:
        sealed = await runtime.store.get(_grace_key(digest))
    except StoreUnavailable:
        return None
    if sealed is None:
        return None
    try:
        raw = base64.b64decode(sealed)
        plain = _grace_cipher(spent).decrypt(raw[:12], raw[12:], None)
    except (ValueError, InvalidTag):
        return None
    found = loads(plain)
    exp = found.get("exp")
    return _Remembered(str(found["access"]), str(found["refresh"]), exp if isinstance(exp, int) else None)


async def _replay_within_grace(
    tx: Tx, runtime: Runtime, row: RefreshToken, spent: str, now: dt.datetime
) -> TokenPair | None:
    """The pair this token was just rotated into, when the rotation is recent enough and the
    family still stands; ``None`` means the second use is reuse."""
    grace = runtime.settings.refresh_reuse_grace_seconds
    used_at = as_utc(row.used_at)
    if grace <= 0 or row.revoked_at is not None or used_at is None:
        return None
    if used_at <= now - dt.timedelta(seconds=grace):
        return None
    pair = await _recall_from_grace(runtime, row.token_hash, spent)
    if pair is None:
        return None
    user = await users_repo.get(tx.session, row.user_id)
    if user is None or user.status != "active":
        return None
    roles = await rbac_repo.user_role_names(tx.session, user.id)
    audit.record(
        tx,
        "auth.refresh",
        "user",
        user.id,
        after={"session": str(row.family_id), "graceReplay": True},
        actor=_user_actor(user.id),
    )
    exp = pair.exp
    expires_in = max(0, int(exp - now.timestamp())) if exp is not None else runtime.codec.access_ttl
    return _pair(pair.access, pair.refresh, expires_in, users.profile(user, roles))


async def _spent_token(tx: Tx, runtime: Runtime, digest: str, presented: str, now: dt.datetime) -> TokenPair:
    """The token could not be spent: a racing twin gets the same pair, else say why (and treat
    a second use after the grace as theft)."""
    row = await repo.find_refresh(tx.session, digest)
    if row is None:
        raise InvalidToken("The refresh token is not valid")
    if row.used_at is not None:
        replay = await _replay_within_grace(tx, runtime, row, presented, now)
        if replay is not None:
            return replay
        revoked = await _revoke_reused_family(tx, runtime, row.family_id, now)
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


async def refresh(tx: Tx, runtime: Runtime, *, refresh_token: str) -> TokenPair:
    digest = tokens.hash_refresh_token(refresh_token)
    now = utcnow()
    spent = await repo.spend_refresh(tx.session, digest, now)
    if spent is None:
        return await _spent_token(tx, runtime, digest, refresh_token, now)
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
    await _remember_for_grace(runtime, digest, refresh_token, pair)
    audit.record(tx, "auth.refresh", "user", user.id, after={"session": str(family)}, actor=_user_actor(user.id))
    return pair


async def end_all_sessions(tx: Tx, runtime: Runtime, user_id: uuid.UUID) -> dict[str, int]:
    """Every session of one user ends now: refresh tokens, Sora sessions, and the access tokens
    of every family that may still hold a live one (an administrator's password reset)."""
    now = utcnow()
    since = now - dt.timedelta(seconds=runtime.codec.access_ttl + runtime.codec.leeway)
    families = await repo.families_issued_since(tx.session, user_id, since)
    # The store first: if it is down nothing is recorded as revoked that still works.
    await blacklist_families(runtime, families)
    ended = await users.end_sessions(tx, user_id)
    return {**ended.audited(), "accessFamilies": len(families)}


# ---------------------------------------------------------------- logout, me


async def logout(
    tx: Tx, runtime: Runtime, me: rbac.Person, *, session_id: str | None, refresh_token: str | None
) -> None:
    """Blacklist the access token, revoke its refresh family (and the one of a given token)."""
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
    # The session's other access tokens (an earlier one a second tab still holds) end too.
    await blacklist_families(runtime, sorted(families))
    audit.record(
        tx,
        "auth.logout",
        "user",
        me.user_id,
        after={"sessions": [str(f) for f in sorted(families)], "revoked": revoked},
    )


async def me(tx: Tx, store: Store, principal: rbac.Person) -> MeOut:
    perms = await users.effective_permissions(tx, store, principal.user_id)
    return MeOut(user=await users.read(tx, principal.user_id), roles=perms.roles, permissions=perms.permissions)


# ---------------------------------------------------------------- service tokens


def _audited(row: ServiceToken) -> audit.Fields:
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
) -> ServiceTokenCreated:
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
    audit.record(tx, "service_token.create", "service_token", row.id, after=_audited(row))
    return ServiceTokenCreated.read(row, token=token)


async def list_service_tokens(tx: Tx, params: PageParams) -> Paged[ServiceToken]:
    rows = await repo.fetch_service_tokens(tx.session, repo.list_service_tokens(params))
    return paged(rows, params, lambda r: (r.created_at, r.id))


async def revoke_service_token(tx: Tx, runtime: Runtime, token_id: uuid.UUID) -> None:
    row = await repo.get_service_token(tx.session, token_id, for_update=True)
    if row is None:
        raise ServiceTokenNotFound
    exp = None if row.expires_at is None else int(row.expires_at.timestamp())
    # Blacklist before the commit: if the store fails, nothing is recorded as revoked that is not.
    await blacklist(runtime.store, row.jti, exp)
    if row.revoked_at is None:
        before = _audited(row)
        row.revoked_at = utcnow()
        await tx.session.flush()
        audit.record(tx, "service_token.revoke", "service_token", row.id, before=before, after=_audited(row))
