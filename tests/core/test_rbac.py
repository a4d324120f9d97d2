"""Roles, permissions, hierarchy and the permission cache through the HTTP stack."""

from __future__ import annotations

import httpx

from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user
from tests.core.test_users import assert_error


async def test_system_roles_are_seeded(client: httpx.AsyncClient, admin: Caller) -> None:
    body = (await client.get("/api/roles", headers=admin.headers)).json()
    levels = {r["name"]: r["level"] for r in body["items"]}
    assert levels == {"admin": 100, "manager": 50, "user": 10, "guest": 0}
    assert body["nextCursor"] is None
    admin_role = (await client.get("/api/roles/admin", headers=admin.headers)).json()
    assert admin_role["permissions"] == ["*"] and admin_role["system"] is True
    perms = (await client.get("/api/permissions", headers=admin.headers)).json()["items"]
    names = {p["name"] for p in perms}
    for needed in ("users:read", "credits:grant", "credits:deduct", "usage:write", "promo:write", "audit:read"):
        assert needed in names


async def test_role_crud(client: httpx.AsyncClient, admin: Caller) -> None:
    created = await client.post(
        "/api/roles",
        headers=admin.headers,
        json={"name": "analyst", "level": 20, "description": "Reads reports", "permissions": ["analytics:read"]},
    )
    assert created.status_code == 201, created.text
    assert created.json()["permissions"] == ["analytics:read"]
    assert_error(
        await client.post("/api/roles", headers=admin.headers, json={"name": "analyst", "level": 20}),
        409,
        "ROLE_EXISTS",
    )
    patched = await client.patch("/api/roles/analyst", headers=admin.headers, json={"level": 30})
    assert patched.json()["level"] == 30
    replaced = await client.put(
        "/api/roles/analyst/permissions", headers=admin.headers, json={"permissions": ["usage:read", "billing:read"]}
    )
    assert replaced.json()["permissions"] == ["billing:read", "usage:read"]
    assert_error(
        await client.put("/api/roles/analyst/permissions", headers=admin.headers, json={"permissions": ["nope:nope"]}),
        422,
        "UNKNOWN_PERMISSION",
    )
    assert (await client.delete("/api/roles/analyst", headers=admin.headers)).status_code == 204
    assert_error(await client.get("/api/roles/analyst", headers=admin.headers), 404, "ROLE_NOT_FOUND")


async def test_role_validation_and_system_rules(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    for body in (
        {"name": "X", "level": 1},
        {"name": "ok-name", "level": 100},
        {"name": "ok-name", "level": -1},
        {"name": "ok-name"},
        {"name": "ok-name", "level": 1, "permissions": ["not a permission"]},
    ):
        assert_error(await client.post("/api/roles", headers=admin.headers, json=body), 422, "VALIDATION_ERROR")
    assert_error(await client.delete("/api/roles/user", headers=admin.headers), 409, "SYSTEM_ROLE")
    assert_error(await client.patch("/api/roles/user", headers=admin.headers, json={"level": 11}), 409, "SYSTEM_ROLE")
    assert_error(
        await client.put("/api/roles/admin/permissions", headers=admin.headers, json={"permissions": []}),
        409,
        "SYSTEM_ROLE",
    )
    await client.post("/api/roles", headers=admin.headers, json={"name": "held", "level": 5})
    await client.put(f"/api/users/{user.id}/roles", headers=admin.headers, json={"roles": ["user", "held"]})
    assert_error(await client.delete("/api/roles/held", headers=admin.headers), 409, "ROLE_IN_USE")


async def test_manager_cannot_escalate_through_roles(
    client: httpx.AsyncClient, manager: Caller, runtime: Runtime
) -> None:
    # Give the manager roles:write so that only the hierarchy rules stand in the way.
    from aihub.core.rbac import repository as repo

    tx = runtime.tx()
    await repo.set_role_permissions(
        tx.session,
        "manager",
        [*(await repo.role_permissions(tx.session, ["manager"]))["manager"], "roles:write"],
    )
    await tx.commit()
    await tx.close()
    await runtime.store.incr("perms:version")

    high = await client.post("/api/roles", headers=manager.headers, json={"name": "vice", "level": 60})
    assert_error(high, 403, "FORBIDDEN")
    same = await client.post("/api/roles", headers=manager.headers, json={"name": "peer", "level": 50})
    assert_error(same, 403, "FORBIDDEN")
    # Cannot hand out a permission the manager does not hold.
    sneaky = await client.post(
        "/api/roles", headers=manager.headers, json={"name": "sneaky", "level": 5, "permissions": ["credits:grant"]}
    )
    assert_error(sneaky, 403, "FORBIDDEN")
    fine = await client.post(
        "/api/roles", headers=manager.headers, json={"name": "helper", "level": 5, "permissions": ["users:read"]}
    )
    assert fine.status_code == 201
    assert_error(
        await client.put(
            "/api/roles/user/permissions", headers=manager.headers, json={"permissions": ["credits:grant"]}
        ),
        403,
        "FORBIDDEN",
    )
    assert_error(
        await client.patch("/api/roles/manager", headers=manager.headers, json={"description": "x"}), 403, "FORBIDDEN"
    )


async def test_permission_create_and_check(
    client: httpx.AsyncClient, admin: Caller, user: Caller, manager: Caller
) -> None:
    created = await client.post(
        "/api/permissions", headers=admin.headers, json={"name": "reports:export", "description": "Export"}
    )
    assert created.status_code == 201
    assert_error(
        await client.post("/api/permissions", headers=admin.headers, json={"name": "reports:export"}),
        409,
        "PERMISSION_EXISTS",
    )
    assert_error(
        await client.post("/api/permissions", headers=admin.headers, json={"name": "Bad Name"}), 422, "VALIDATION_ERROR"
    )
    own = await client.post("/api/permissions/check", headers=user.headers, json={"permission": "users:read"})
    assert own.json() == {"allowed": False}
    other = await client.post(
        "/api/permissions/check", headers=user.headers, json={"userId": manager.id, "permission": "users:read"}
    )
    assert_error(other, 403, "FORBIDDEN")
    by_admin = await client.post(
        "/api/permissions/check", headers=admin.headers, json={"userId": manager.id, "permission": "users:read"}
    )
    assert by_admin.json() == {"allowed": True}
    assert (
        await client.post("/api/permissions/check", headers=admin.headers, json={"permission": "anything:at-all"})
    ).json() == {"allowed": True}


async def test_revoked_permission_is_refused_on_next_request(
    client: httpx.AsyncClient, admin: Caller, manager: Caller
) -> None:
    # Warm the cache, then take users:read away from the manager role.
    assert (await client.get("/api/users", headers=manager.headers)).status_code == 200
    assert (await client.get("/api/users", headers=manager.headers)).status_code == 200
    current = (await client.get("/api/roles/manager", headers=admin.headers)).json()["permissions"]
    remaining = [p for p in current if p != "users:read"]
    response = await client.put(
        "/api/roles/manager/permissions", headers=admin.headers, json={"permissions": remaining}
    )
    assert response.status_code == 200
    assert_error(await client.get("/api/users", headers=manager.headers), 403, "FORBIDDEN")


async def test_user_grant_and_revoke(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    assert_error(await client.get("/api/audit-logs", headers=user.headers), 403, "FORBIDDEN")
    granted = await client.post(
        f"/api/users/{user.id}/permissions", headers=admin.headers, json={"permission": "audit:read"}
    )
    assert granted.status_code == 201
    assert granted.json()["grants"] == ["audit:read"]
    assert (await client.get("/api/audit-logs", headers=user.headers)).status_code == 200
    revoked = await client.delete(f"/api/users/{user.id}/permissions/audit:read", headers=admin.headers)
    assert revoked.status_code == 204
    assert_error(await client.get("/api/audit-logs", headers=user.headers), 403, "FORBIDDEN")
    assert_error(
        await client.delete(f"/api/users/{user.id}/permissions/audit:read", headers=admin.headers),
        404,
        "PERMISSION_NOT_FOUND",
    )
    assert_error(
        await client.post(f"/api/users/{user.id}/permissions", headers=admin.headers, json={"permission": "x:y"}),
        422,
        "UNKNOWN_PERMISSION",
    )


async def test_role_change_takes_effect_immediately(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    promoted = await create_user(runtime)
    assert_error(await client.get("/api/users", headers=promoted.headers), 403, "FORBIDDEN")
    await client.put(f"/api/users/{promoted.id}/roles", headers=admin.headers, json={"roles": ["manager"]})
    assert (await client.get("/api/users", headers=promoted.headers)).status_code == 200
    await client.put(f"/api/users/{promoted.id}/roles", headers=admin.headers, json={"roles": ["user"]})
    assert_error(await client.get("/api/users", headers=promoted.headers), 403, "FORBIDDEN")
