"""/api/roles and /api/permissions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from aihub.core.rbac import schemas
from aihub.core.rbac import service as rbac
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_of_sorted, short_list_params
from aihub.models import Permission

roles_router = APIRouter(prefix="/api/roles", tags=["roles"], route_class=TxRoute)
permissions_router = APIRouter(prefix="/api/permissions", tags=["permissions"], route_class=TxRoute)
ShortPage = Annotated[PageParams, Depends(short_list_params)]


@roles_router.get("", response_model=schemas.RoleList)
async def list_roles(
    tx: TxDep, _: Annotated[Principal, RequirePermission("roles:read")], page: ShortPage
) -> Paged[schemas.RoleOut]:
    """All roles, highest level first (a short list: one page by default)."""
    return Paged(*page_of_sorted(await rbac.list_roles(tx), page, lambda r: (-r.level, r.name)))


@roles_router.post(
    "",
    response_model=schemas.RoleOut,
    status_code=201,
    responses=errors(rbac.RoleExists, rbac.UnknownPermissions),
)
async def create_role(
    body: schemas.RoleCreate,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("roles:write")],
) -> schemas.RoleOut:
    """Create a role below one's own level, with permissions one holds."""
    return await rbac.create_role(
        tx,
        runtime.store,
        actor,
        name=body.name,
        level=body.level,
        description=body.description,
        permissions=body.permissions,
    )


@roles_router.get("/{name}", response_model=schemas.RoleOut, responses=errors(rbac.RoleNotFound))
async def read_role(name: str, tx: TxDep, _: Annotated[Principal, RequirePermission("roles:read")]) -> schemas.RoleOut:
    return await rbac.read_role(tx, name)


@roles_router.patch("/{name}", response_model=schemas.RoleOut, responses=errors(rbac.RoleNotFound, rbac.SystemRole))
async def update_role(
    name: str,
    body: schemas.RoleUpdate,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("roles:write")],
) -> schemas.RoleOut:
    return await rbac.update_role(tx, runtime.store, actor, name, level=body.level, description=body.description)


@roles_router.delete("/{name}", status_code=204, responses=errors(rbac.RoleNotFound, rbac.SystemRole, rbac.RoleInUse))
async def delete_role(
    name: str,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("roles:write")],
) -> Response:
    """Delete a custom role that nobody holds; system roles stay."""
    await rbac.delete_role(tx, runtime.store, actor, name)
    return Response(status_code=204)


@roles_router.put(
    "/{name}/permissions",
    response_model=schemas.RoleOut,
    responses=errors(rbac.RoleNotFound, rbac.SystemRole, rbac.UnknownPermissions),
)
async def replace_role_permissions(
    name: str,
    body: schemas.RolePermissionsBody,
    tx: TxDep,
    runtime: RuntimeDep,
    actor: Annotated[Principal, RequirePermission("roles:write")],
) -> schemas.RoleOut:
    """Replace the role's permissions; cached permissions of its holders are invalidated."""
    return await rbac.set_role_permissions(tx, runtime.store, actor, name, body.permissions)


@permissions_router.get("", response_model=schemas.PermissionList)
async def list_permissions(
    tx: TxDep, _: Annotated[Principal, RequirePermission("permissions:read")], page: ShortPage
) -> Paged[Permission]:
    """All permissions by name (a short list: one page by default)."""
    return Paged(*page_of_sorted(await rbac.list_permissions(tx), page, lambda p: (p.name,)))


@permissions_router.post(
    "",
    response_model=schemas.PermissionOut,
    status_code=201,
    responses=errors(rbac.PermissionExists),
)
async def create_permission(
    body: schemas.PermissionCreate,
    tx: TxDep,
    _: Annotated[Principal, RequirePermission("permissions:write")],
) -> Permission:
    return await rbac.create_permission(tx, body.name, body.description)
