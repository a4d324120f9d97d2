"""Service tokens: admin-only, scopes honoured by core's permission checks, revocable."""

from __future__ import annotations

import httpx

from aihub.kit.runtime import Runtime
from tests.auth.conftest import assert_error, signed_up
from tests.conftest import Caller


async def create(auth: httpx.AsyncClient, admin: Caller, **body: object) -> httpx.Response:
    return await auth.post("/service-tokens", headers=admin.headers, json=body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_scopes_are_honoured_by_core(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, admin: Caller, runtime: Runtime
) -> None:
    response = await create(auth_client, admin, name="reader", scopes=["users:read"], expiresInDays=30)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == {
        "id",
        "name",
        "scopes",
        "token",
        "createdBy",
        "createdAt",
        "expiresAt",
        "revokedAt",
    }
    assert created["scopes"] == ["users:read"]
    assert created["createdBy"] == admin.id
    claims = runtime.codec.verify(created["token"])
    assert (claims.typ, claims.role, claims.scopes, claims.sub) == (
        "service",
        "service",
        ("users:read",),
        created["id"],
    )
    assert claims.exp is not None

    token = bearer(created["token"])
    assert (await client.get("/api/users", headers=token)).status_code == 200  # users:read
    assert_error(await client.post("/api/users", headers=token, json={"email": "x@example.com"}), 403, "FORBIDDEN")
    assert_error(await client.get("/api/audit-logs", headers=token), 403, "FORBIDDEN")
    # "me" endpoints want a person.
    assert_error(await client.get("/api/users/me", headers=token), 403, "FORBIDDEN")
    assert_error(await auth_client.get("/me", headers=token), 403, "FORBIDDEN")
    # A service token cannot mint service tokens, even one holding that scope would need a user.
    assert_error(
        await create(auth_client, Caller("", "", created["token"], []), name="x", scopes=["users:read"]),
        403,
        "FORBIDDEN",
    )


async def test_revoked_service_token_is_refused(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, admin: Caller, runtime: Runtime
) -> None:
    created = (await create(auth_client, admin, name="forever", scopes=["users:read"])).json()
    assert created["expiresAt"] is None
    assert runtime.codec.verify(created["token"]).exp is None
    assert (await client.get("/api/users", headers=bearer(created["token"]))).status_code == 200

    assert (await auth_client.delete(f"/service-tokens/{created['id']}", headers=admin.headers)).status_code == 204
    assert_error(await client.get("/api/users", headers=bearer(created["token"])), 401, "TOKEN_REVOKED")
    # No exp: the blacklist entry never expires.
    jti = runtime.codec.verify(created["token"]).jti
    assert await runtime.store.exists(f"blacklist:{jti}")
    assert await runtime.store.ttl(f"blacklist:{jti}") is None
    # Revoking twice is harmless; an unknown id is a 404.
    assert (await auth_client.delete(f"/service-tokens/{created['id']}", headers=admin.headers)).status_code == 204
    missing = await auth_client.delete("/service-tokens/00000000-0000-0000-0000-000000000000", headers=admin.headers)
    assert_error(missing, 404, "SERVICE_TOKEN_NOT_FOUND")
    assert_error(await auth_client.delete("/service-tokens/not-a-uuid", headers=admin.headers), 404, "NOT_FOUND")


async def test_list_never_shows_token_values(auth_client: httpx.AsyncClient, admin: Caller) -> None:
    made = [(await create(auth_client, admin, name=f"t{i}", scopes=["usage:write"])).json() for i in range(3)]
    await auth_client.delete(f"/service-tokens/{made[0]['id']}", headers=admin.headers)
    first = await auth_client.get("/service-tokens", headers=admin.headers, params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [t["name"] for t in page["items"]] == ["t2", "t1"]
    assert page["nextCursor"]
    second = (
        await auth_client.get(
            "/service-tokens", headers=admin.headers, params={"limit": 2, "cursor": page["nextCursor"]}
        )
    ).json()
    assert [t["name"] for t in second["items"]] == ["t0"]
    assert second["items"][0]["revokedAt"] is not None
    assert second["nextCursor"] is None
    text = first.text + str(second)
    assert "token" not in {k for t in page["items"] for k in t}
    for m in made:
        assert m["token"] not in text


async def test_non_admin_cannot_manage_service_tokens(
    auth_client: httpx.AsyncClient, admin: Caller, manager: Caller
) -> None:
    s = await signed_up(auth_client, "plain@example.com")
    for caller_headers in (s.headers, manager.headers):
        assert_error(
            await auth_client.post(
                "/service-tokens", headers=caller_headers, json={"name": "x", "scopes": ["users:read"]}
            ),
            403,
            "FORBIDDEN",
        )
        assert_error(await auth_client.get("/service-tokens", headers=caller_headers), 403, "FORBIDDEN")
        assert_error(
            await auth_client.delete("/service-tokens/00000000-0000-0000-0000-000000000000", headers=caller_headers),
            403,
            "FORBIDDEN",
        )
    assert_error(await auth_client.get("/service-tokens"), 401, "UNAUTHORIZED")


async def test_scopes_must_be_known_permissions(auth_client: httpx.AsyncClient, admin: Caller) -> None:
    unknown = await create(auth_client, admin, name="x", scopes=["credits:steal"])
    assert assert_error(unknown, 422, "UNKNOWN_PERMISSION")["details"] == {"permissions": ["credits:steal"]}
    too_long = await create(auth_client, admin, name="x", scopes=["users:read"], expiresInDays=100_000)
    assert_error(too_long, 422, "VALIDATION_ERROR")
    for body in (
        {"name": "x", "scopes": []},
        {"name": "", "scopes": ["users:read"]},
        {"scopes": ["users:read"]},
        {"name": "x", "scopes": "users:read"},
        {"name": "x", "scopes": ["users:read"], "expiresInDays": 0},
    ):
        assert_error(
            await auth_client.post("/service-tokens", headers=admin.headers, json=body),
            422,
            "VALIDATION_ERROR",
        )
