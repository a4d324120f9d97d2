"""Administrator bootstrap and recovery used by the CLI (first start, `aihub admin create`,
`aihub admin set-password`)."""

from __future__ import annotations

from sqlalchemy import select

from aihub.auth import service as auth
from aihub.core.audit import service as audit
from aihub.core.rbac import repository as rbac_repo
from aihub.core.rbac import service as rbac
from aihub.core.sessions import lockout
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.kit.db import utcnow
from aihub.kit.passwords import hash_password
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


class UnknownAccount(users.UserNotFound):
    message = "No account has this email"


async def set_password(runtime: Runtime, email: str, password: str) -> dict[str, int]:
    """Replace an account's password (a lost admin password) and end every session it has:
    refresh families, the access tokens they issued, Sora sessions. One audit row says who
    (the system, from the command line) did it; the password itself is never recorded.
    Returns what was revoked."""
    tx = runtime.tx()
    audit.set_actor(tx, audit.SYSTEM)
    try:
        normalised = users.normalise_email(email)
        user = await users_repo.by_email(tx.session, normalised)
        if user is None or user.status == "deleted":
            raise UnknownAccount
        user = await users.get_user(tx, user.id, for_update=True)
        user.password_hash = await hash_password(password)
        user.updated_at = user.sessions_revoked_at = utcnow()
        await tx.session.flush()
        ended = await auth.end_all_sessions(tx, runtime, user.id)
        audit.record(tx, "user.password_reset", "user", user.id, after={"by": "cli", **ended})
        await tx.commit()
    finally:
        await tx.close()
    # The new password opens the account at once, even if guessing had locked it.
    await lockout.forget_failures(runtime.store, normalised)
    return ended
