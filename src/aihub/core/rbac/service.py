"""Roles, permissions, the hierarchy rules, and the effective-permission cache.

The cache key carries a global version; every role or grant change bumps the version after
commit, so a request that read the old permissions can only ever cache them under the old
(now unused) version. Read order matters: version first, database second.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from aihub.core.audit import service as audit
from aihub.core.rbac import repository as repo
from aihub.core.rbac.schemas import RoleOut
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, Forbidden, NotFound
from aihub.kit.jsonutil import dumps, loads
from aihub.kit.slots import Slot
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import ApiKey, Permission, Role, User

log = structlog.get_logger("aihub.rbac")

ADMIN = "admin"
SYSTEM_ROLES = ("admin", "manager", "user", "guest")
PERMISSION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}:[a-z][a-z0-9-]{0,30}$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
_VERSION_KEY = "perms:version"


class MissingPermission(Forbidden):
    """403 naming the permission; every permission check (dependency or inline) raises this."""

    def __init__(self, permission: str) -> None:
        super().__init__(f"Missing permission {permission}", details={"permission": permission})


class RoleNotFound(NotFound):
    code, message = "ROLE_NOT_FOUND", "No such role"


class PermissionNotFound(NotFound):
    code, message = "PERMISSION_NOT_FOUND", "No such permission"


class UnknownRoles(AppError):
    status_code, code, message = 422, "UNKNOWN_ROLE", "One or more roles do not exist"


class UnknownPermissions(AppError):
    status_code, code, message = 422, "UNKNOWN_PERMISSION", "One or more permissions do not exist"


class RoleExists(Conflict):
    code, message = "ROLE_EXISTS", "A role with this name exists"


class PermissionExists(Conflict):
    code, message = "PERMISSION_EXISTS", "A permission with this name exists"


class SystemRole(Conflict):
    code, message = "SYSTEM_ROLE", "System roles cannot be changed this way"


class RoleInUse(Conflict):
    code, message = "ROLE_IN_USE", "The role is still assigned to users"


@dataclass(frozen=True, slots=True)
class Effective:
    roles: tuple[str, ...]
    level: int
    permissions: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    def can(self, permission: str) -> bool:
        return self.is_admin or permission in self.permissions


NOBODY = Effective(roles=(), level=-1, permissions=frozenset())


PrincipalKind = Literal["user", "service"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (with roles) or a service token (with scopes)."""

    id: str
    kind: PrincipalKind
    email: str | None
    effective: Effective
    jti: str
    token_exp: int | None
    # The rows authentication loaded: the user (a person), the key (a caller by API key).
    user: User | None = field(default=None, compare=False)
    api_key: ApiKey | None = field(default=None, compare=False)

    @property
    def user_id(self) -> uuid.UUID | None:
        return uuid.UUID(self.id) if self.kind == "user" else None

    @property
    def is_admin(self) -> bool:
        return self.effective.is_admin

    @property
    def level(self) -> int:
        return self.effective.level

    def can(self, permission: str) -> bool:
        return self.effective.can(permission)

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise MissingPermission(permission)

    def actor(self) -> audit.Actor:
        return audit.Actor(id=self.id, type=self.kind)


@dataclass(frozen=True, slots=True)
class Person(Principal):
    """A principal that is a user (what ``CurrentUser`` yields): its ``user_id`` is never None."""

    @property
    def user_id(self) -> uuid.UUID:
        return uuid.UUID(self.id)


# ---------------------------------------------------------------- effective permissions


async def _cache_version(store: Store) -> str:
    return await store.get(_VERSION_KEY) or "0"


async def effective(tx: Tx, store: Store, user_id: uuid.UUID, ttl: int) -> Effective:
    try:
        version = await _cache_version(store)
        key = f"perms:{version}:{user_id}"
        cached = await store.get(key) if ttl else None
    except StoreUnavailable:
        log.warning("permission_cache_unavailable")
        version, key, cached = "", "", None
    if cached is not None:
        data = loads(cached)
        return Effective(tuple(data["r"]), int(data["l"]), frozenset(data["p"]))
    roles, perms = await repo.effective_rows(tx.session, user_id)
    result = Effective(
        roles=tuple(name for name, _ in roles),
        level=max((level for _, level in roles), default=-1),
        permissions=frozenset(perms),
    )
    if key and ttl:
        payload = dumps({"r": list(result.roles), "l": result.level, "p": sorted(result.permissions)})
        try:
            await store.set(key, payload.decode(), ttl=ttl)
        except StoreUnavailable:
            log.warning("permission_cache_unavailable")
    return result


_PERMS_BUMP: Slot[bool] = Slot("rbac.perms_bump")


def invalidate_after_commit(tx: Tx, store: Store) -> None:
    async def bump() -> None:
        try:
            await store.incr(_VERSION_KEY)
        except StoreUnavailable:
            # Stale entries then live until their TTL; say so loudly rather than fail the write.
            log.error("permission_cache_invalidation_failed")

    if not tx.info.get(_PERMS_BUMP):  # once per unit of work, however many changes it makes
        tx.info.set(_PERMS_BUMP, True)
        tx.after_commit(bump)


# ---------------------------------------------------------------- hierarchy rules


def require_above(actor: Principal, level: int, what: str) -> None:
    """Nobody acts on a level at or above their own, unless admin."""
    if actor.is_admin:
        return
    if level >= actor.level:
        raise Forbidden(f"You cannot {what} at or above your own level")


async def check_assignable(tx: Tx, actor: Principal, names: Iterable[str]) -> dict[str, Role]:
    wanted = set(names)
    roles = await repo.roles_by_name(tx.session, wanted)
    missing = sorted(wanted - roles.keys())
    if missing:
        raise UnknownRoles(details={"roles": missing})
    for role in roles.values():
        require_above(actor, role.level, f"assign the role {role.name}")
    return roles


def check_grantable(actor: Principal, permissions: Iterable[str]) -> None:
    """A non-admin may only hand on permissions they hold themselves."""
    if actor.is_admin:
        return
    lacking = sorted(p for p in set(permissions) if not actor.can(p))
    if lacking:
        raise Forbidden("You cannot grant permissions you do not hold", details={"permissions": lacking})


async def check_permissions_exist(tx: Tx, names: Iterable[str]) -> list[str]:
    wanted = sorted(set(names))
    missing = sorted(set(wanted) - await repo.existing_permissions(tx.session, wanted))
    if missing:
        raise UnknownPermissions(details={"permissions": missing})
    return wanted


# ---------------------------------------------------------------- roles


def role_state(role: Role, permissions: list[str]) -> RoleOut:
    """A role with its permissions (the admin role: ``["*"]``, it holds every one)."""
    return RoleOut.read(role, permissions=["*"] if role.name == ADMIN else permissions)


async def get_role(tx: Tx, name: str, *, for_update: bool = False) -> Role:
    role = await repo.get_role(tx.session, name, for_update=for_update)
    if role is None:
        raise RoleNotFound
    return role


async def list_roles(tx: Tx) -> list[RoleOut]:
    roles = await repo.list_roles(tx.session)
    perms = await repo.role_permissions(tx.session, [r.name for r in roles])
    return [role_state(r, perms[r.name]) for r in roles]


async def read_role(tx: Tx, name: str) -> RoleOut:
    role = await get_role(tx, name)
    perms = await repo.role_permissions(tx.session, [name])
    return role_state(role, perms[name])


async def create_role(
    tx: Tx,
    store: Store,
    actor: Principal,
    *,
    name: str,
    level: int,
    description: str | None,
    permissions: list[str],
) -> RoleOut:
    require_above(actor, level, "create a role")
    if await repo.get_role(tx.session, name) is not None:
        raise RoleExists
    perms = await check_permissions_exist(tx, permissions)
    check_grantable(actor, perms)
    role = Role(name=name, level=level, description=description, system=False)
    tx.session.add(role)
    await tx.session.flush()
    await repo.set_role_permissions(tx.session, name, perms)
    created = role_state(role, perms)
    audit.record(tx, "role.create", "role", name, after=created.snapshot())
    invalidate_after_commit(tx, store)
    return created


async def update_role(
    tx: Tx, store: Store, actor: Principal, name: str, *, level: int | None, description: str | None
) -> RoleOut:
    role = await get_role(tx, name, for_update=True)
    require_above(actor, role.level, "edit a role")
    before = await read_role(tx, name)
    if level is not None and level != role.level:
        if role.system:
            raise SystemRole("The level of a system role cannot change")
        require_above(actor, level, "move a role")
        role.level = level
    if description is not None:
        role.description = description
    await tx.session.flush()
    after = await read_role(tx, name)
    audit.record(tx, "role.update", "role", name, before=before.snapshot(), after=after.snapshot())
    invalidate_after_commit(tx, store)
    return after


async def delete_role(tx: Tx, store: Store, actor: Principal, name: str) -> None:
    role = await get_role(tx, name, for_update=True)
    if role.system:
        raise SystemRole("System roles cannot be deleted")
    require_above(actor, role.level, "delete a role")
    if await repo.role_in_use(tx.session, name):
        raise RoleInUse
    before = await read_role(tx, name)
    await tx.session.delete(role)
    await tx.session.flush()
    audit.record(tx, "role.delete", "role", name, before=before.snapshot())
    invalidate_after_commit(tx, store)


async def set_role_permissions(tx: Tx, store: Store, actor: Principal, name: str, permissions: list[str]) -> RoleOut:
    role = await get_role(tx, name, for_update=True)
    if role.name == ADMIN:
        raise SystemRole("The admin role holds every permission")
    require_above(actor, role.level, "change a role's permissions")
    perms = await check_permissions_exist(tx, permissions)
    before = await read_role(tx, name)
    # Removing a permission is as sensitive as adding one: the actor must hold both sides.
    check_grantable(actor, set(perms) ^ set(before.permissions))
    await repo.set_role_permissions(tx.session, name, perms)
    role.updated_at = utcnow()
    await tx.session.flush()
    after = role_state(role, perms)
    audit.record(tx, "role.permissions", "role", name, before=before.snapshot(), after=after.snapshot())
    invalidate_after_commit(tx, store)
    return after


# ---------------------------------------------------------------- permissions


async def list_permissions(tx: Tx) -> list[Permission]:
    return list(await repo.list_permissions(tx.session))


async def create_permission(tx: Tx, name: str, description: str | None) -> Permission:
    if await repo.get_permission(tx.session, name) is not None:
        raise PermissionExists
    perm = Permission(name=name, description=description)
    tx.session.add(perm)
    await tx.session.flush()
    after = {"name": perm.name, "description": perm.description, "created_at": perm.created_at}
    audit.record(tx, "permission.create", "permission", name, after=after)
    return perm
