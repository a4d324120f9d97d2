"""Users: creation (with a credit account), profile changes, suspension, soft deletion.

Rules: emails are normalised and unique; nobody edits a user whose highest level is at or
above their own unless admin; the last active admin cannot be demoted, suspended or deleted.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from aihub.core.apikeys import service as apikeys
from aihub.core.audit import service as audit
from aihub.core.rbac import repository as rbac_repo
from aihub.core.rbac import service as rbac
from aihub.core.sessions import lockout
from aihub.core.sessions import repository as sessions_repo
from aihub.core.users import repository as repo
from aihub.core.users.schemas import PermissionsOut, RolesOut, UserOut, UserUpdate
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, Forbidden, NotFound
from aihub.kit.pagination import Paged, PageParams, page_of
from aihub.kit.passwords import hash_password, verify_password
from aihub.kit.runtime import Runtime
from aihub.kit.store import Store
from aihub.models import User

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
DEFAULT_ROLE = "user"


class UserNotFound(NotFound):
    code, message = "USER_NOT_FOUND", "No such user"


class EmailTaken(Conflict):
    code, message = "EMAIL_TAKEN", "An account with this email exists"


class InvalidEmail(AppError):
    status_code, code, message = 422, "VALIDATION_ERROR", "The email address is not valid"


class WrongPassword(AppError):
    status_code, code, message = 403, "INVALID_CREDENTIALS", "The current password is wrong"


class LastAdmin(Conflict):
    code, message = "LAST_ADMIN", "The last active admin cannot lose admin rights"


class UserDeleted(Conflict):
    code, message = "USER_DELETED", "The user has been deleted"


def normalise_email(raw: str) -> str:
    email = raw.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidEmail(details=[{"field": "body.email", "message": "not a valid email address"}])
    return email


def profile(user: User, roles: list[str]) -> UserOut:
    """A user as the API shows it (and as audit entries keep it: ``snapshot()``)."""
    return UserOut.read(user, roles=roles)


@dataclass(frozen=True, slots=True)
class EndedSessions:
    refresh_tokens: int
    sora_sessions: int

    def audited(self) -> dict[str, int]:
        return {"refreshTokens": self.refresh_tokens, "soraSessions": self.sora_sessions}


async def get_user(tx: Tx, user_id: uuid.UUID, *, for_update: bool = False) -> User:
    user = await repo.get(tx.session, user_id, for_update=for_update)
    if user is None:
        raise UserNotFound
    return user


async def read(tx: Tx, user_id: uuid.UUID) -> UserOut:
    user = await get_user(tx, user_id)
    return profile(user, await rbac_repo.user_role_names(tx.session, user.id))


async def search(tx: Tx, params: PageParams, *, q: str | None, role: str | None, status: str | None) -> Paged[UserOut]:
    rows = await repo.fetch(tx.session, repo.search(params, q=q, role=role, status=status))
    items, cursor = page_of(rows, params, lambda u: (u.created_at, u.id))
    roles = await rbac_repo.roles_of_users(tx.session, [u.id for u in items])
    return Paged([profile(u, roles[u.id]) for u in items], cursor)


async def create(
    tx: Tx,
    store: Store,
    actor: rbac.Principal | None,
    *,
    email: str,
    password: str | None,
    display_name: str | None = None,
    roles: list[str] | None = None,
    verified: bool = False,
    action: str = "user.create",
) -> UserOut:
    """Create a user with its credit account (balance 0). ``actor=None`` means the system."""
    email = normalise_email(email)
    wanted = [DEFAULT_ROLE] if roles is None else roles
    if actor is not None:
        await rbac.check_assignable(tx, actor, wanted)
    else:
        missing = set(wanted) - (await rbac_repo.roles_by_name(tx.session, wanted)).keys()
        if missing:
            raise rbac.UnknownRoles(details={"roles": sorted(missing)})
    if await repo.by_email(tx.session, email) is not None:
        raise EmailTaken
    user = User(
        email=email,
        display_name=display_name,
        password_hash=await hash_password(password) if password else None,
        verified=verified,
        status="active",
    )
    try:
        await repo.add(tx.session, user)
    except IntegrityError as exc:  # a concurrent create with the same email won the race
        raise EmailTaken from exc
    await rbac_repo.set_user_roles(tx.session, user.id, wanted)
    result = profile(user, await rbac_repo.user_role_names(tx.session, user.id))
    audit.record(tx, action, "user", user.id, after=result.snapshot())
    return result


async def _target_level(tx: Tx, user_id: uuid.UUID) -> int:
    roles = await rbac_repo.roles_by_name(tx.session, await rbac_repo.user_role_names(tx.session, user_id))
    return max((r.level for r in roles.values()), default=-1)


async def _guard_edit(tx: Tx, actor: rbac.Principal, user: User) -> None:
    if user.status == "deleted":
        raise UserDeleted
    if actor.kind == "user" and actor.id == str(user.id):
        return  # editing oneself is governed by the endpoint's own rules
    rbac.require_above(actor, await _target_level(tx, user.id), "change a user")


async def _guard_last_admin(tx: Tx, user: User) -> None:
    roles = await rbac_repo.user_role_names(tx.session, user.id)
    if rbac.ADMIN not in roles or user.status != "active":
        return
    if await rbac_repo.active_admin_count(tx.session) <= 1:
        raise LastAdmin


async def update_me(
    tx: Tx,
    runtime: Runtime,
    user_id: uuid.UUID,
    *,
    display_name: str | None,
    password: str | None,
    current_password: str | None,
) -> UserOut:
    user = await get_user(tx, user_id, for_update=True)
    before = await read(tx, user_id)
    if password is not None and user.password_hash is None:
        # An account without a password (Google sign-in) sets its first one: there is no
        # current password to prove, and no session a password opened to end.
        user.password_hash = await hash_password(password)
    elif password is not None:
        # The current password is checked behind the login lockout of this account, on the
        # same counter: a stolen access token must not become an unlimited password oracle.
        await lockout.count_attempt(runtime, user.email)
        if not current_password or not await verify_password(user.password_hash, current_password):
            raise WrongPassword
        await lockout.forget_failures(runtime.store, user.email)
        user.password_hash = await hash_password(password)
        # A new password ends the sessions an old one may have opened (the caller's access
        # token stays valid until it expires; it was just proven with the current password).
        await end_sessions(tx, user.id)
    if display_name is not None:
        user.display_name = display_name
    user.updated_at = utcnow()
    await tx.session.flush()
    after = await read(tx, user_id)
    audit.record(
        tx,
        "user.password_change" if password is not None else "user.update",
        "user",
        user.id,
        before=before.snapshot(),
        after=after.snapshot(),
    )
    return after


async def end_sessions(tx: Tx, user_id: uuid.UUID) -> EndedSessions:
    """A suspended or deleted user keeps no refresh token; access tokens die on their own,
    because every request re-reads the user's status."""
    now = utcnow()
    revoked = await sessions_repo.revoke_user_refresh_tokens(tx.session, user_id, now)
    video = await sessions_repo.revoke_sora_sessions(tx.session, user_id, now)
    ended = EndedSessions(revoked, video)
    if revoked or video:
        audit.record(tx, "auth.sessions_revoked", "user", user_id, after=ended.audited())
    return ended


async def update(
    tx: Tx,
    store: Store,
    actor: rbac.Principal,
    user_id: uuid.UUID,
    body: UserUpdate,
) -> UserOut:
    user = await get_user(tx, user_id, for_update=True)
    await _guard_edit(tx, actor, user)
    changes = body.model_dump(include=body.model_fields_set)
    before = await read(tx, user_id)
    if changes.get("status") == "suspended" and user.status == "active":
        if actor.kind == "user" and actor.id == str(user.id):
            raise Forbidden("You cannot suspend yourself")
        await _guard_last_admin(tx, user)
    if "email" in changes and changes["email"] is not None:
        email = normalise_email(changes["email"])
        if email != user.email and await repo.by_email(tx.session, email) is not None:
            raise EmailTaken
        user.email = email
    for field in ("display_name", "verified", "status"):
        if changes.get(field) is not None:
            setattr(user, field, changes[field])
    user.updated_at = utcnow()
    try:
        await tx.session.flush()
    except IntegrityError as exc:
        raise EmailTaken from exc
    after = await read(tx, user_id)
    action = "user.update"
    if before.status != after.status:
        action = "user.suspend" if after.status == "suspended" else "user.reactivate"
    if after.status == "suspended":
        await end_sessions(tx, user.id)
    if before.status != after.status:
        apikeys.user_status_after_commit(tx, store, user.id, after.status)
    audit.record(tx, action, "user", user.id, before=before.snapshot(), after=after.snapshot())
    return after


async def delete(tx: Tx, store: Store, actor: rbac.Principal, user_id: uuid.UUID) -> None:
    """Soft delete: anonymise, mark deleted, drop roles; the ledger and audit history stay."""
    user = await get_user(tx, user_id, for_update=True)
    await _guard_edit(tx, actor, user)
    if actor.kind == "user" and actor.id == str(user.id):
        raise Forbidden("You cannot delete yourself")
    await _guard_last_admin(tx, user)
    before = await read(tx, user_id)
    user.email = f"deleted-{user.id.hex}@deleted.invalid"
    user.display_name = None
    user.password_hash = None
    user.google_id = None  # the Google account may sign up afresh; no link to an erased user
    user.status = "deleted"
    user.updated_at = utcnow()
    await rbac_repo.set_user_roles(tx.session, user.id, [])
    await tx.session.flush()
    await end_sessions(tx, user.id)
    apikeys.user_status_after_commit(tx, store, user.id, "deleted")
    after = await read(tx, user_id)
    audit.record(tx, "user.delete", "user", user.id, before=before.snapshot(), after=after.snapshot())
    rbac.invalidate_after_commit(tx, store)


async def set_roles(tx: Tx, store: Store, actor: rbac.Principal, user_id: uuid.UUID, roles: list[str]) -> RolesOut:
    user = await get_user(tx, user_id, for_update=True)
    if user.status == "deleted":
        raise UserDeleted
    current = await rbac_repo.user_role_names(tx.session, user.id)
    if not actor.is_admin:
        rbac.require_above(actor, await _target_level(tx, user.id), "change this user's roles")
    # Every role added or removed must be one the actor may hand out.
    await rbac.check_assignable(tx, actor, set(roles) ^ set(current))
    if rbac.ADMIN in current and rbac.ADMIN not in roles:
        await _guard_last_admin(tx, user)
    await rbac_repo.set_user_roles(tx.session, user.id, roles)
    after = await rbac_repo.user_role_names(tx.session, user.id)
    audit.record(tx, "user.roles", "user", user.id, before={"roles": current}, after={"roles": after})
    rbac.invalidate_after_commit(tx, store)
    return RolesOut(user_id=user.id, roles=after)


async def roles_of(tx: Tx, user_id: uuid.UUID) -> RolesOut:
    return RolesOut(user_id=user_id, roles=(await read(tx, user_id)).roles)


async def effective_permissions(tx: Tx, store: Store, user_id: uuid.UUID) -> PermissionsOut:
    await get_user(tx, user_id)
    roles, perms = await rbac_repo.effective_rows(tx.session, user_id)
    names = [name for name, _ in roles]
    grants = await rbac_repo.user_grants(tx.session, user_id)
    permissions = ["*"] if rbac.ADMIN in names else sorted(perms)
    return PermissionsOut(user_id=user_id, roles=names, permissions=permissions, grants=grants)


async def grant(tx: Tx, store: Store, actor: rbac.Principal, user_id: uuid.UUID, permission: str) -> PermissionsOut:
    user = await get_user(tx, user_id, for_update=True)
    await _guard_edit(tx, actor, user)
    await rbac.check_permissions_exist(tx, [permission])
    rbac.check_grantable(actor, [permission])
    if await rbac_repo.add_user_grant(tx.session, user.id, permission):
        audit.record(tx, "user.grant", "user", user.id, after={"permission": permission})
        rbac.invalidate_after_commit(tx, store)
    return await effective_permissions(tx, store, user_id)


async def revoke(tx: Tx, store: Store, actor: rbac.Principal, user_id: uuid.UUID, permission: str) -> None:
    user = await get_user(tx, user_id, for_update=True)
    await _guard_edit(tx, actor, user)
    rbac.check_grantable(actor, [permission])
    if not await rbac_repo.remove_user_grant(tx.session, user.id, permission):
        raise rbac.PermissionNotFound("The user holds no such direct grant")
    audit.record(tx, "user.revoke", "user", user.id, before={"permission": permission})
    rbac.invalidate_after_commit(tx, store)
