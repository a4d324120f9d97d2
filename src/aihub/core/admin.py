"""Administrator bootstrap used by the CLI (first start, `aihub admin create`)."""

from __future__ import annotations

from sqlalchemy import select

from aihub.core.audit import service as audit
from aihub.core.rbac import repository as rbac_repo
from aihub.core.rbac import service as rbac
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.kit.runtime import Runtime
from aihub.models import UserRole


async def admin_exists(runtime: Runtime) -> bool:
    tx = runtime.tx()
    try:
        stmt = select(UserRole.user_id).where(UserRole.role_name == rbac.ADMIN).limit(1)
        return (await tx.session.execute(stmt)).first() is not None
    finally:
        await tx.close()


async def ensure_admin(runtime: Runtime, email: str, password: str) -> str:
    """Create the admin, or add the admin role to an existing account. Returns what it did."""
    tx = runtime.tx()
    audit.set_actor(tx, audit.SYSTEM)
    try:
        existing = await users_repo.by_email(tx.session, users.normalise_email(email))
        if existing is None:
            await users.create(
                tx,
                runtime.store,
                None,
                email=email,
                password=password,
                roles=[rbac.ADMIN],
                verified=True,
                action="user.create_admin",
            )
            outcome = "created administrator"
        else:
            roles = await rbac_repo.user_role_names(tx.session, existing.id)
            if rbac.ADMIN in roles:
                return "already an administrator:"
            await rbac_repo.set_user_roles(tx.session, existing.id, [*roles, rbac.ADMIN])
            audit.record(
                tx,
                "user.roles",
                "user",
                existing.id,
                before={"roles": roles},
                after={"roles": [*roles, rbac.ADMIN]},
            )
            rbac.invalidate_after_commit(tx, runtime.store)
            outcome = "granted the admin role to"
        await tx.commit()
        return outcome
    finally:
        await tx.close()
