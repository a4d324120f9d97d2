"""API keys through core's HTTP stack, on both backends: issue, list, narrow, revoke, verify."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from sqlalchemy import select

from aihub.kit.runtime import Runtime
from aihub.models import ApiKey, AuditLog
from tests.conftest import Caller, _core_app, create_user
from tests.core.test_users import assert_error


def key_headers(key: str, *, header: str = "bearer") -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}


async def make_key(client: httpx.AsyncClient, caller_headers: dict[str, str], **body: object) -> dict[str, object]:
    response = await client.post("/api/keys", headers=caller_headers, json={"name": "test", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_a_key_is_shown_once_stored_as_a_hash_and_authenticates_as_its_user(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    created = await make_key(client, user.headers, models=["openai/gpt-4o", "anthropic/*"])
    key = str(created["key"])
    assert key.startswith("ahk_" + str(created["prefix"]))
    assert len(key) - len("ahk_") - 8 >= 32  # >= 128 bits of secret in base64url
    assert created["status"] == "active" and created["models"] == ["anthropic/*", "openai/gpt-4o"]
    for header in ("bearer", "x-api-key"):
        me = await client.get("/api/users/me", headers=key_headers(key, header=header))
        assert me.status_code == 200, me.text
        assert me.json()["id"] == user.id
    # Listing and reading never show the key again; the database has only its hash.
    listed = (await client.get("/api/keys", headers=user.headers)).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    assert "key" not in listed["items"][0]
    assert "key" not in (await client.get(f"/api/keys/{created['id']}", headers=user.headers)).json()
    tx = runtime.tx()
    try:
        row = (await tx.session.execute(select(ApiKey))).scalar_one()
        assert key not in (row.secret_hash, row.prefix) and len(row.secret_hash) == 64
        audits = (await tx.session.execute(select(AuditLog))).scalars().all()
        assert all(key not in str(a.after) for a in audits)
    finally:
        await tx.close()


async def test_wrong_unknown_revoked_and_expired_keys_are_refused(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    created = await make_key(client, user.headers)
    key = str(created["key"])
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert_error(await client.get("/api/users/me", headers=key_headers(tampered)), 401, "INVALID_API_KEY")
    assert_error(await client.get("/api/users/me", headers=key_headers("ahk_short")), 401, "INVALID_API_KEY")
    assert_error(await client.get("/api/users/me", headers={"X-API-Key": ""}), 401, "INVALID_API_KEY")
    # Expired: set in the past directly (the API refuses a past expiresAt).
    tx = runtime.tx()
    try:
        row = await tx.session.get(ApiKey, uuid.UUID(str(created["id"])))
        assert row is not None
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await tx.commit()
    finally:
        await tx.close()
    assert_error(await client.get("/api/users/me", headers=key_headers(key)), 401, "KEY_EXPIRED")
    listed = (await client.get(f"/api/keys/{created['id']}", headers=user.headers)).json()
    assert listed["status"] == "expired"
    other = await make_key(client, user.headers)
    assert (await client.delete(f"/api/keys/{other['id']}", headers=user.headers)).status_code == 204
    assert_error(await client.get("/api/users/me", headers=key_headers(str(other["key"]))), 401, "INVALID_API_KEY")
    assert (await client.get(f"/api/keys/{other['id']}", headers=user.headers)).json()["status"] == "revoked"
    # The revocation marker every gateway reads in its rate-limit round trip.
    assert await runtime.store.exists(f"blacklist:apikey:{other['id']}")
    assert (await client.delete(f"/api/keys/{other['id']}", headers=user.headers)).status_code == 204


async def test_a_suspended_or_deleted_users_keys_stop_at_once(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    owner = await create_user(runtime)
    key = str((await make_key(client, owner.headers))["key"])
    assert (await client.get("/api/users/me", headers=key_headers(key))).status_code == 200
    patched = await client.patch(f"/api/users/{owner.id}", headers=admin.headers, json={"status": "suspended"})
    assert patched.status_code == 200, patched.text
    assert_error(await client.get("/api/users/me", headers=key_headers(key)), 403, "ACCOUNT_SUSPENDED")
    assert await runtime.store.exists(f"blacklist:apikey-user:{owner.id}")
    await client.patch(f"/api/users/{owner.id}", headers=admin.headers, json={"status": "active"})
    assert not await runtime.store.exists(f"blacklist:apikey-user:{owner.id}")
    assert (await client.get("/api/users/me", headers=key_headers(key))).status_code == 200
    assert (await client.delete(f"/api/users/{owner.id}", headers=admin.headers)).status_code == 204
    assert_error(await client.get("/api/users/me", headers=key_headers(key)), 401, "INVALID_API_KEY")


async def test_a_key_has_its_users_permissions_and_no_more(
    client: httpx.AsyncClient, user: Caller, admin: Caller
) -> None:
    key = str((await make_key(client, user.headers))["key"])
    assert_error(await client.get("/api/users", headers=key_headers(key)), 403, "FORBIDDEN")
    admin_key = str((await make_key(client, admin.headers))["key"])
    assert (await client.get("/api/users", headers=key_headers(admin_key))).status_code == 200


async def test_only_admins_manage_other_users_keys(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    alice, bob = await create_user(runtime), await create_user(runtime)
    alices = await make_key(client, alice.headers)
    assert_error(
        await client.post("/api/keys", headers=bob.headers, json={"name": "x", "userId": alice.id}), 403, "FORBIDDEN"
    )
    assert_error(await client.get("/api/keys", headers=bob.headers, params={"userId": alice.id}), 403, "FORBIDDEN")
    for method in ("GET", "PATCH", "DELETE"):
        body = {"name": "mine"} if method == "PATCH" else None
        response = await client.request(method, f"/api/keys/{alices['id']}", headers=bob.headers, json=body)
        assert_error(response, 404, "KEY_NOT_FOUND")
    minted = await make_key(client, admin.headers, userId=alice.id)
    assert minted["userId"] == alice.id
    listed = (await client.get("/api/keys", headers=admin.headers, params={"userId": alice.id})).json()
    assert {item["id"] for item in listed["items"]} == {alices["id"], minted["id"]}
    assert (await client.delete(f"/api/keys/{alices['id']}", headers=admin.headers)).status_code == 204


async def test_a_key_cannot_issue_or_widen_a_key_beyond_its_own(client: httpx.AsyncClient, user: Caller) -> None:
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    parent = await make_key(
        client,
        user.headers,
        models=["openai/*"],
        allowedIps=["10.0.0.0/8", "127.0.0.1"],  # the test client is at 127.0.0.1
        requestsPerMinute=10,
        budget={"maxCredits": 100, "period": "day"},
        expiresAt=soon,
    )
    headers = key_headers(str(parent["key"]))
    wide = await client.post("/api/keys", headers=headers, json={"name": "child"})
    details = assert_error(wide, 403, "KEY_EXCEEDS_OWNER")["details"]
    assert set(details["fields"]) == {"models", "allowedIps", "requestsPerMinute", "budget", "expiresAt"}  # type: ignore[index]
    narrow = {
        "name": "child",
        "models": ["openai/gpt-4o"],
        "allowedIps": ["10.1.0.0/16"],
        "requestsPerMinute": 5,
        "budget": {"maxCredits": 50, "period": "month"},
        "expiresAt": soon,
    }
    child = await client.post("/api/keys", headers=headers, json=narrow)
    assert child.status_code == 201, child.text
    lifted = await client.patch(f"/api/keys/{child.json()['id']}", headers=headers, json={"models": None})
    assert assert_error(lifted, 403, "KEY_EXCEEDS_OWNER")["details"] == {"fields": ["models"]}
    # The user's own token is not narrowed by any key.
    ok = await client.patch(f"/api/keys/{child.json()['id']}", headers=user.headers, json={"models": None})
    assert ok.status_code == 200 and ok.json()["models"] is None


async def test_bad_input_and_unauthenticated_calls(client: httpx.AsyncClient, user: Caller) -> None:
    assert_error(await client.post("/api/keys", json={"name": "x"}), 401, "UNAUTHORIZED")
    assert_error(await client.get("/api/keys"), 401, "UNAUTHORIZED")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    cases: list[dict[str, object]] = [
        {},
        {"name": ""},
        {"name": "x" * 101},
        {"name": "x", "models": ["gpt-4o"]},
        {"name": "x", "models": ["openai/gpt 4o"]},
        {"name": "x", "allowedIps": ["300.1.1.1"]},
        {"name": "x", "requestsPerMinute": 0},
        {"name": "x", "requestsPerMinute": "5"},
        {"name": "x", "budget": {"maxCredits": -1, "period": "day"}},
        {"name": "x", "budget": {"maxCredits": 1, "period": "week"}},
        {"name": "x", "expiresAt": past},
        {"name": "x", "unknown": 1},
    ]
    for body in cases:
        assert_error(await client.post("/api/keys", headers=user.headers, json=body), 422, "VALIDATION_ERROR")
    bad_json = await client.post(
        "/api/keys", headers={**user.headers, "Content-Type": "application/json"}, content=b"{nope"
    )
    assert_error(bad_json, 400, "INVALID_JSON")
    assert_error(await client.get("/api/keys/not-a-uuid", headers=user.headers), 404, "NOT_FOUND")
    assert_error(await client.get(f"/api/keys/{uuid.uuid4()}", headers=user.headers), 404, "KEY_NOT_FOUND")
    assert_error(await client.get("/api/keys/current", headers=user.headers), 403, "FORBIDDEN")
    huge = {"name": "x", "models": [f"openai/m{i}" for i in range(101)]}
    assert_error(await client.post("/api/keys", headers=user.headers, json=huge), 422, "VALIDATION_ERROR")


async def test_core_refuses_a_key_outside_its_allowed_ips(runtime: Runtime, user: Caller) -> None:
    """Core checks the caller's address itself, whatever a gateway decided (defence in depth)."""

    def at(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=_core_app(runtime), client=(address, 40_000))
        return httpx.AsyncClient(transport=transport, base_url="http://core.test")

    async with at("10.1.2.3") as inside, at("192.0.2.7") as outside, at("2001:db8::1") as v6:
        created = await make_key(inside, user.headers, allowedIps=["10.0.0.0/8", "2001:db8::/32"])
        headers = key_headers(str(created["key"]))
        assert (await inside.get("/api/users/me", headers=headers)).status_code == 200
        assert (await v6.get("/api/users/me", headers=headers)).status_code == 200
        for path in ("/api/users/me", "/api/keys/current", "/api/keys"):
            assert_error(await outside.get(path, headers=headers), 403, "KEY_IP_NOT_ALLOWED")
        # The user's own token is not bound to the key's addresses.
        assert (await outside.get("/api/users/me", headers=user.headers)).status_code == 200
        # Lifting the restriction takes effect on the next request.
        lifted = await inside.patch(f"/api/keys/{created['id']}", headers=user.headers, json={"allowedIps": None})
        assert lifted.status_code == 200, lifted.text
        assert (await outside.get("/api/users/me", headers=headers)).status_code == 200


async def test_the_gateway_resolution_endpoint_describes_the_presenting_key(
    client: httpx.AsyncClient, user: Caller
) -> None:
    created = await make_key(client, user.headers, allowedIps=["127.0.0.1"], requestsPerMinute=7)
    current = await client.get("/api/keys/current", headers=key_headers(str(created["key"]), header="x-api-key"))
    assert current.status_code == 200, current.text
    body = current.json()
    assert body["id"] == created["id"] and body["userId"] == user.id
    assert body["role"] == "user" and body["allowedIps"] == ["127.0.0.1/32"] and body["requestsPerMinute"] == 7


async def test_a_key_cannot_log_out_or_mint_service_tokens(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, admin: Caller
) -> None:
    key = str((await make_key(client, admin.headers))["key"])
    assert_error(await auth_client.post("/logout", headers=key_headers(key), json={}), 403, "FORBIDDEN")
    minted = await auth_client.post(
        "/service-tokens", headers=key_headers(key), json={"name": "x", "scopes": ["usage:write"]}
    )
    assert_error(minted, 403, "FORBIDDEN")
    assert (await client.get("/api/users/me", headers=key_headers(key))).status_code == 200  # still valid
