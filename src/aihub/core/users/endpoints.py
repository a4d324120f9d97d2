"""/api/users — profiles, administration, roles and permissions of one user."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response

from aihub.core.rbac import schemas as rbac_schemas
from aihub.core.rbac import service as rbac
from aihub.core.rbac.deps import CurrentPrincipal, CurrentUser
from aihub.core.rbac.service import Principal
from aihub.core.sessions.lockout import LoginLocked
from aihub.core.users import schemas
from aihub.core.users import service as users
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params

router = APIRouter(prefix="/api/users", tags=["users"], route_class=TxRoute)
# Whether a user holds a permission: a question about that user, asked under /api/permissions.
permission_check_router = APIRouter(prefix="/api/permissions", tags=["permissions"], route_class=TxRoute)


@router.get("/me", response_model=schemas.UserOut)
async def read_me(tx: TxDep, me: CurrentUser) -> schemas.UserOut:
    """The calling user's own profile."""
    # The principal already holds the user row and its roles (loaded to authenticate).
    assert me.user is not None  # a person: the row that authenticated them
    return users.profile(me.user, list(me.effective.roles))


@router.patch(
    "/me",
    response_model=schemas.UserOut,
    responses=errors(users.WrongPassword, users.UserNotFound, LoginLocked),
)
async def update_me(body: schemas.MeUpdate, tx: TxDep, me: CurrentUser, runtime: RuntimeDep) -> schemas.UserOut:
    """Change one's display name, or password (which needs the current password).

    The current password is checked behind the account's login lockout (the same counter as
    `POST /api/auth/login`): a wrong one answers 403 `INVALID_CREDENTIALS` and counts as a
    failed sign-in; once locked, 429 `TOO_MANY_LOGIN_ATTEMPTS` with `Retry-After`."""
    return await users.update_me(
        tx,
        runtime,
        me.user_id,
        display_name=body.display_name,
        password=body.password,
        current_password=body.current_password,
    )


@router.get("", response_model=schemas.UserPage)
async def list_users(
    tx: TxDep,
    _: Annotated[Principal, RequirePermission("users:read")],
    page: Annotated[PageParams, Depends(page_params)],
    q: Annotated[str | None, Query(max_length=100, description="Part of the email or name")] = None,
    role: Annotated[str | None, Query(max_length=32)] = None,
    status: Literal["active", "suspended", "deleted"] | None = None,
) -> Paged[schemas.UserOut]:
    """Users, newest first, filtered by text, role and status."""
    return await users.search(tx, page, q=q, role=role, status=status)


@router.post(
    "",
    response_model=schemas.UserOut,
    status_code=201,
    responses=errors(users.EmailTaken, users.InvalidEmail, rbac.UnknownRoles),
)
async def create_user(
    body: schemas.UserCreate,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("users:create")],
) -> schemas.UserOut:
    """Create a user (role `user` unless roles are given) with an empty credit account."""
    return await users.create(
        tx,
        runtime.store,
        actor,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        roles=body.roles,
        verified=body.verified,
    )


@router.get("/{user_id}", response_model=schemas.UserOut, responses=errors(users.UserNotFound))
async def read_user(
    user_id: uuid.UUID, tx: TxDep, _: Annotated[Principal, RequirePermission("users:read")]
) -> schemas.UserOut:
    return await users.read(tx, user_id)


@router.patch(
    "/{user_id}",
    response_model=schemas.UserOut,
    responses=errors(users.UserNotFound, users.EmailTaken, users.InvalidEmail, users.UserDeleted, users.LastAdmin),
)
async def update_user(
    user_id: uuid.UUID,
    body: schemas.UserUpdate,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("users:update")],
) -> schemas.UserOut:
    """Edit a user below one's own level; `status: suspended` suspends, `active` reactivates."""
    return await users.update(tx, runtime.store, actor, user_id, body)


@router.delete("/{user_id}", status_code=204, responses=errors(users.UserNotFound, users.LastAdmin))
async def delete_user(
    user_id: uuid.UUID,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("users:delete")],
) -> Response:
    """Mark the user deleted and anonymise the email; the ledger and audit history are kept."""
    await users.delete(tx, runtime.store, actor, user_id)
    return Response(status_code=204)


@router.get("/{user_id}/roles", response_model=schemas.RolesOut, responses=errors(users.UserNotFound))
async def read_roles(
    user_id: uuid.UUID, tx: TxDep, _: Annotated[Principal, RequirePermission("users:read")]
) -> schemas.RolesOut:
    return await users.roles_of(tx, user_id)


@router.put(
    "/{user_id}/roles",
    response_model=schemas.RolesOut,
    responses=errors(users.UserNotFound, users.UserDeleted, users.LastAdmin, rbac.UnknownRoles),
)
async def replace_roles(
    user_id: uuid.UUID,
    body: schemas.RolesBody,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("roles:assign")],
) -> schemas.RolesOut:
    """Replace the user's roles. Only roles below one's own level can be added or removed."""
    return await users.set_roles(tx, runtime.store, actor, user_id, body.roles)


@router.get("/{user_id}/permissions", response_model=schemas.PermissionsOut, responses=errors(users.UserNotFound))
async def read_permissions(
    user_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, me: CurrentUser
) -> schemas.PermissionsOut:
    """Effective permissions (roles and direct grants). One's own, or anyone's with `users:read`."""
    if me.id != str(user_id):
        me.require("users:read")
    return await users.effective_permissions(tx, runtime.store, user_id)


@router.post(
    "/{user_id}/permissions",
    response_model=schemas.PermissionsOut,
    status_code=201,
    responses=errors(users.UserNotFound, users.UserDeleted, rbac.UnknownPermissions),
)
async def grant_permission(
    user_id: uuid.UUID,
    body: schemas.GrantBody,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("permissions:write")],
) -> schemas.PermissionsOut:
    """Grant one permission to one user directly (on top of their roles)."""
    return await users.grant(tx, runtime.store, actor, user_id, body.permission)


@router.delete(
    "/{user_id}/permissions/{permission}",
    status_code=204,
    responses=errors(users.UserNotFound, users.UserDeleted, rbac.PermissionNotFound),
)
async def revoke_permission(
    user_id: uuid.UUID,
    permission: str,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("permissions:write")],
) -> Response:
    await users.revoke(tx, runtime.store, actor, user_id, permission)
    return Response(status_code=204)


@permission_check_router.post(
    "/check", response_model=rbac_schemas.PermissionCheckOut, responses=errors(users.UserNotFound)
)
async def check_permission(
    body: rbac_schemas.PermissionCheck, tx: TxDep, runtime: RuntimeDep, caller: CurrentPrincipal
) -> dict[str, bool]:
    """Does a user hold a permission? One's own, or anyone's with `permissions:read`."""
    if body.user_id is None or str(body.user_id) == caller.id:
        return {"allowed": caller.can(body.permission)}
    caller.require("permissions:read")
    user = await users.get_user(tx, body.user_id)
    if user.status != "active":
        return {"allowed": False}
    effective = await rbac.effective(tx, runtime.store, user.id, runtime.settings.permission_cache_ttl_seconds)
    return {"allowed": effective.can(body.permission)}
