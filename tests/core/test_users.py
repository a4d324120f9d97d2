"""Users through the HTTP stack, on PostgreSQL + Redis and on SQLite + memory."""

from __future__ import annotations

import uuid

import httpx
import pytest

from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    return dict(body)


async def test_me_returns_own_profile(client: httpx.AsyncClient, user: Caller) -> None:
    response = await client.get("/api/users/me", headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == user.id
    assert body["email"] == "user@example.com"
    assert body["roles"] == ["user"]
    assert body["status"] == "active"
    assert set(body) == {"id", "email", "displayName", "verified", "status", "roles", "createdAt", "updatedAt"}


async def test_me_needs_a_token(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/users/me"), 401, "UNAUTHORIZED")
    assert_error(await client.get("/api/users/me", headers={"Authorization": "Basic abc"}), 401, "INVALID_TOKEN")
    assert_error(await client.get("/api/users/me", headers={"Authorization": "Bearer not.a.jwt"}), 401, "INVALID_TOKEN")


async def test_forged_identity_header_is_ignored(client: httpx.AsyncClient, user: Caller, admin: Caller) -> None:
    # Without a token the header means nothing; with one, identity is the token's.
    assert_error(await client.get("/api/users", headers={"X-User-Id": admin.id}), 401, "UNAUTHORIZED")
    forged = {**user.headers, "X-User-Id": admin.id, "X-User-Role": "admin"}
    assert_error(await client.get("/api/users", headers=forged), 403, "FORBIDDEN")
    me = await client.get("/api/users/me", headers=forged)
    assert me.json()["id"] == user.id


async def test_patch_me_display_name_and_password(client: httpx.AsyncClient, runtime: Runtime) -> None:
    caller = await create_user(runtime, password="old-password-1")
    response = await client.patch("/api/users/me", headers=caller.headers, json={"displayName": "Ada"})
    assert response.status_code == 200
    assert response.json()["displayName"] == "Ada"
    wrong = await client.patch(
        "/api/users/me", headers=caller.headers, json={"password": "new-password-1", "currentPassword": "nope"}
    )
    assert_error(wrong, 403, "INVALID_CREDENTIALS")
    missing = await client.patch("/api/users/me", headers=caller.headers, json={"password": "new-password-1"})
    assert_error(missing, 403, "INVALID_CREDENTIALS")
    ok = await client.patch(
        "/api/users/me",
        headers=caller.headers,
        json={"password": "new-password-1", "currentPassword": "old-password-1"},
    )
    assert ok.status_code == 200
    short = await client.patch("/api/users/me", headers=caller.headers, json={"password": "short"})
    body = assert_error(short, 422, "VALIDATION_ERROR")
    assert body["details"][0]["field"] == "body.password"  # type: ignore[index]
    unknown = await client.patch("/api/users/me", headers=caller.headers, json={"role": "admin"})
    assert_error(unknown, 422, "VALIDATION_ERROR")


async def test_create_user_normalises_email_and_opens_account(client: httpx.AsyncClient, admin: Caller) -> None:
    response = await client.post(
        "/api/users", headers=admin.headers, json={"email": "  New.Person@Example.COM ", "password": "pass-word-1"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["email"] == "new.person@example.com"
    assert body["roles"] == ["user"]
    again = await client.post("/api/users", headers=admin.headers, json={"email": "NEW.person@example.com"})
    assert_error(again, 409, "EMAIL_TAKEN")


async def test_create_user_account_row_exists(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    from aihub.models import CreditAccount

    response = await client.post("/api/users", headers=admin.headers, json={"email": "acct@example.com"})
    tx = runtime.tx()
    try:
        account = await tx.session.get(CreditAccount, uuid.UUID(response.json()["id"]))
        assert account is not None
        assert (account.balance, account.reserved) == (0, 0)
    finally:
        await tx.close()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"email": "not-an-email"},
        {"email": "a@b.c", "password": "short"},
        {"email": "a@b.c", "roles": "admin"},
        {"email": "a@b.c", "extra": 1},
        {"email": "x" * 400 + "@example.com"},
    ],
)
async def test_create_user_validation(client: httpx.AsyncClient, admin: Caller, body: dict[str, object]) -> None:
    response = await client.post("/api/users", headers=admin.headers, json=body)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_create_user_unknown_role(client: httpx.AsyncClient, admin: Caller) -> None:
    response = await client.post(
        "/api/users", headers=admin.headers, json={"email": "r@example.com", "roles": ["ghost"]}
    )
    assert_error(response, 422, "UNKNOWN_ROLE")


async def test_user_cannot_call_admin_endpoints(client: httpx.AsyncClient, user: Caller, admin: Caller) -> None:
    assert_error(await client.get("/api/users", headers=user.headers), 403, "FORBIDDEN")
    assert_error(
        await client.post("/api/users", headers=user.headers, json={"email": "z@example.com"}), 403, "FORBIDDEN"
    )
    assert_error(await client.get(f"/api/users/{admin.id}", headers=user.headers), 403, "FORBIDDEN")
    assert_error(
        await client.patch(f"/api/users/{admin.id}", headers=user.headers, json={"displayName": "x"}), 403, "FORBIDDEN"
    )
    assert_error(await client.delete(f"/api/users/{admin.id}", headers=user.headers), 403, "FORBIDDEN")
    assert_error(
        await client.put(f"/api/users/{admin.id}/roles", headers=user.headers, json={"roles": []}), 403, "FORBIDDEN"
    )
    assert_error(await client.get("/api/audit-logs", headers=user.headers), 403, "FORBIDDEN")
    assert_error(
        await client.post("/api/roles", headers=user.headers, json={"name": "x1", "level": 1}), 403, "FORBIDDEN"
    )


async def test_list_users_filters_and_pages(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    for i in range(5):
        await create_user(runtime, email=f"page{i}@example.com")
    await create_user(runtime, email="boss@example.com", roles=["manager"])
    await create_user(runtime, email="gone@example.com", status="suspended")

    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/users", headers=admin.headers, params=params)).json()
        seen += [u["email"] for u in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 8  # 7 created + the admin
    assert seen[0] == "gone@example.com"  # newest first

    q = (await client.get("/api/users", headers=admin.headers, params={"q": "PAGE"})).json()
    assert sorted(u["email"] for u in q["items"]) == [f"page{i}@example.com" for i in range(5)]
    role = (await client.get("/api/users", headers=admin.headers, params={"role": "manager"})).json()
    assert [u["email"] for u in role["items"]] == ["boss@example.com"]
    status = (await client.get("/api/users", headers=admin.headers, params={"status": "suspended"})).json()
    assert [u["email"] for u in status["items"]] == ["gone@example.com"]
    wild = (await client.get("/api/users", headers=admin.headers, params={"q": "%"})).json()
    assert wild["items"] == []

    for params in ({"limit": "0"}, {"limit": "101"}, {"status": "nope"}, {"cursor": "!!garbage"}):
        assert_error(await client.get("/api/users", headers=admin.headers, params=params), 422, "VALIDATION_ERROR")


async def test_read_update_not_found(client: httpx.AsyncClient, admin: Caller) -> None:
    missing = uuid.uuid4()
    assert_error(await client.get(f"/api/users/{missing}", headers=admin.headers), 404, "USER_NOT_FOUND")
    assert_error(await client.patch(f"/api/users/{missing}", headers=admin.headers, json={}), 404, "USER_NOT_FOUND")
    assert_error(await client.delete(f"/api/users/{missing}", headers=admin.headers), 404, "USER_NOT_FOUND")
    assert_error(await client.get("/api/users/not-a-uuid", headers=admin.headers), 404, "NOT_FOUND")


async def test_suspend_blocks_the_user_and_reactivate_restores(
    client: httpx.AsyncClient, admin: Caller, user: Caller
) -> None:
    response = await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"status": "suspended"})
    assert response.status_code == 200
    assert response.json()["status"] == "suspended"
    assert_error(await client.get("/api/users/me", headers=user.headers), 403, "ACCOUNT_SUSPENDED")
    await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"status": "active"})
    assert (await client.get("/api/users/me", headers=user.headers)).status_code == 200
    bad = await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"status": "deleted"})
    assert_error(bad, 422, "VALIDATION_ERROR")


async def test_update_email_conflict(client: httpx.AsyncClient, admin: Caller, user: Caller, manager: Caller) -> None:
    clash = await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"email": manager.email.upper()})
    assert_error(clash, 409, "EMAIL_TAKEN")


async def test_delete_anonymises_and_keeps_history(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    response = await client.delete(f"/api/users/{user.id}", headers=admin.headers)
    assert response.status_code == 204
    body = (await client.get(f"/api/users/{user.id}", headers=admin.headers)).json()
    assert body["status"] == "deleted"
    assert body["email"].endswith("@deleted.invalid")
    assert user.email not in body["email"]
    assert body["roles"] == []
    assert_error(await client.get("/api/users/me", headers=user.headers), 401, "INVALID_TOKEN")
    assert_error(await client.delete(f"/api/users/{user.id}", headers=admin.headers), 409, "USER_DELETED")
    # The email is free again.
    again = await client.post("/api/users", headers=admin.headers, json={"email": user.email})
    assert again.status_code == 201


async def test_last_admin_is_protected(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    assert_error(await client.delete(f"/api/users/{admin.id}", headers=admin.headers), 403, "FORBIDDEN")
    other = await create_user(runtime, roles=["admin"])
    assert_error(
        await client.patch(f"/api/users/{admin.id}", headers=admin.headers, json={"status": "suspended"}),
        403,
        "FORBIDDEN",
    )
    # Two admins: one may remove the other; then the remaining one is the last.
    assert (
        await client.put(f"/api/users/{other.id}/roles", headers=admin.headers, json={"roles": ["user"]})
    ).status_code == 200
    other2 = await create_user(runtime, roles=["admin"])
    await client.delete(f"/api/users/{other2.id}", headers=admin.headers)
    demote_self = await client.put(f"/api/users/{admin.id}/roles", headers=admin.headers, json={"roles": ["user"]})
    assert_error(demote_self, 409, "LAST_ADMIN")


async def test_manager_hierarchy(
    client: httpx.AsyncClient, manager: Caller, admin: Caller, user: Caller, runtime: Runtime
) -> None:
    # A manager may edit a user and assign roles below manager ...
    renamed = await client.patch(f"/api/users/{user.id}", headers=manager.headers, json={"displayName": "Renamed"})
    assert renamed.json()["displayName"] == "Renamed"
    assert (
        await client.patch(f"/api/users/{user.id}", headers=manager.headers, json={"displayName": "ok"})
    ).status_code == 200
    assert (
        await client.put(f"/api/users/{user.id}/roles", headers=manager.headers, json={"roles": ["guest"]})
    ).status_code == 200
    # ... but not assign admin or manager, nor touch an admin or another manager.
    for roles in (["admin"], ["manager"], ["user", "admin"]):
        response = await client.put(f"/api/users/{user.id}/roles", headers=manager.headers, json={"roles": roles})
        assert_error(response, 403, "FORBIDDEN")
    peer = await create_user(runtime, roles=["manager"])
    assert_error(
        await client.patch(f"/api/users/{peer.id}", headers=manager.headers, json={"displayName": "x"}),
        403,
        "FORBIDDEN",
    )
    assert_error(
        await client.patch(f"/api/users/{admin.id}", headers=manager.headers, json={"status": "suspended"}),
        403,
        "FORBIDDEN",
    )
    assert_error(
        await client.put(f"/api/users/{peer.id}/roles", headers=manager.headers, json={"roles": ["user"]}),
        403,
        "FORBIDDEN",
    )
    # Nor create a user with a role at their level.
    assert_error(
        await client.post(
            "/api/users", headers=manager.headers, json={"email": "m2@example.com", "roles": ["manager"]}
        ),
        403,
        "FORBIDDEN",
    )
    roles = (await client.get(f"/api/users/{user.id}/roles", headers=manager.headers)).json()
    assert roles["roles"] == ["guest"]


async def test_effective_permissions(client: httpx.AsyncClient, manager: Caller, user: Caller, admin: Caller) -> None:
    own = (await client.get(f"/api/users/{user.id}/permissions", headers=user.headers)).json()
    assert own["permissions"] == []
    assert_error(await client.get(f"/api/users/{manager.id}/permissions", headers=user.headers), 403, "FORBIDDEN")
    mgr = (await client.get(f"/api/users/{manager.id}/permissions", headers=admin.headers)).json()
    assert "users:read" in mgr["permissions"] and "credits:grant" not in mgr["permissions"]
    adm = (await client.get(f"/api/users/{admin.id}/permissions", headers=admin.headers)).json()
    assert adm["permissions"] == ["*"]
