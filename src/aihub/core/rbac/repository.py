"""SQL for roles, permissions and their assignments."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.models import Permission, Role, RolePermission, User, UserPermission, UserRole


async def get_role(session: AsyncSession, name: str, *, for_update: bool = False) -> Role | None:
    stmt = select(Role).where(Role.name == name)
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def list_roles(session: AsyncSession) -> Sequence[Role]:
    return (await session.execute(select(Role).order_by(Role.level.desc(), Role.name))).scalars().all()


async def roles_by_name(session: AsyncSession, names: Iterable[str]) -> dict[str, Role]:
    wanted = list(set(names))
    if not wanted:
        return {}
    rows = (await session.execute(select(Role).where(Role.name.in_(wanted)))).scalars().all()
    return {role.name: role for role in rows}


async def role_permissions(session: AsyncSession, names: Sequence[str]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {name: [] for name in names}
    if not names:
        return result
    rows = await session.execute(
        select(RolePermission.role_name, RolePermission.permission_name)
        .where(RolePermission.role_name.in_(list(names)))
        .order_by(RolePermission.permission_name)
    )
    for role_name, perm in rows:
        result[role_name].append(perm)
    return result


async def set_role_permissions(session: AsyncSession, role: str, permissions: Iterable[str]) -> None:
    await session.execute(delete(RolePermission).where(RolePermission.role_name == role))
    rows = [{"role_name": role, "permission_name": p} for p in sorted(set(permissions))]
    if rows:
        await session.execute(insert(RolePermission), rows)


async def role_in_use(session: AsyncSession, name: str) -> bool:
    stmt = select(func.count()).select_from(UserRole).where(UserRole.role_name == name)
    return bool((await session.execute(stmt)).scalar_one())


async def get_permission(session: AsyncSession, name: str) -> Permission | None:
    return await session.get(Permission, name)


async def list_permissions(session: AsyncSession) -> Sequence[Permission]:
    return (await session.execute(select(Permission).order_by(Permission.name))).scalars().all()


async def existing_permissions(session: AsyncSession, names: Iterable[str]) -> set[str]:
    wanted = list(set(names))
    if not wanted:
        return set()
    rows = await session.execute(select(Permission.name).where(Permission.name.in_(wanted)))
    return set(rows.scalars().all())


async def user_role_names(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        select(UserRole.role_name)
        .join(Role, Role.name == UserRole.role_name)
        .where(UserRole.user_id == user_id)
        .order_by(Role.level.desc(), Role.name)
    )
    return list(rows.scalars().all())


async def roles_of_users(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    result: dict[uuid.UUID, list[str]] = {uid: [] for uid in user_ids}
    if not user_ids:
        return result
    rows = await session.execute(
        select(UserRole.user_id, UserRole.role_name)
        .join(Role, Role.name == UserRole.role_name)
        .where(UserRole.user_id.in_(list(user_ids)))
        .order_by(Role.level.desc(), Role.name)
    )
    for uid, name in rows:
        result[uid].append(name)
    return result


async def set_user_roles(session: AsyncSession, user_id: uuid.UUID, roles: Iterable[str]) -> None:
    await session.execute(delete(UserRole).where(UserRole.user_id == user_id))
    rows = [{"user_id": user_id, "role_name": r} for r in sorted(set(roles))]
    if rows:
        await session.execute(insert(UserRole), rows)


async def user_grants(session: AsyncSession, user_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        select(UserPermission.permission_name)
        .where(UserPermission.user_id == user_id)
        .order_by(UserPermission.permission_name)
    )
    return list(rows.scalars().all())


async def add_user_grant(session: AsyncSession, user_id: uuid.UUID, permission: str) -> bool:
    if await session.get(UserPermission, (user_id, permission)) is not None:
        return False
    session.add(UserPermission(user_id=user_id, permission_name=permission))
    await session.flush()
    return True


async def remove_user_grant(session: AsyncSession, user_id: uuid.UUID, permission: str) -> bool:
    result = await session.execute(
        delete(UserPermission).where(UserPermission.user_id == user_id, UserPermission.permission_name == permission)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def effective_rows(session: AsyncSession, user_id: uuid.UUID) -> tuple[list[tuple[str, int]], set[str]]:
    """The user's roles with levels, and every permission from those roles and direct grants."""
    roles = (
        await session.execute(
            select(Role.name, Role.level)
            .join(UserRole, UserRole.role_name == Role.name)
            .where(UserRole.user_id == user_id)
            .order_by(Role.level.desc(), Role.name)
        )
    ).all()
    from_roles = (
        select(RolePermission.permission_name)
        .join(UserRole, UserRole.role_name == RolePermission.role_name)
        .where(UserRole.user_id == user_id)
    )
    direct = select(UserPermission.permission_name).where(UserPermission.user_id == user_id)
    perms = (await session.execute(from_roles.union(direct))).scalars().all()
    return [(name, level) for name, level in roles], set(perms)


async def active_admin_count(session: AsyncSession) -> int:
    stmt = (
        select(func.count())
        .select_from(UserRole)
        .join(User, User.id == UserRole.user_id)
        .where(UserRole.role_name == "admin", User.status == "active")
    )
    return int((await session.execute(stmt)).scalar_one())
