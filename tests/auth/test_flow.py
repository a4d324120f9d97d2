"""Register, login, refresh, logout through the HTTP stack, on PostgreSQL + Redis and SQLite + memory."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from aihub.core.sessions import lockout
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog, RefreshToken
from tests.auth.conftest import PASSWORD, age_rotation, assert_error, login, register, signed_up
from tests.conftest import Caller, create_user


async def test_full_cycle(auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime) -> None:
    user = await register(auth_client, "Cycle@Example.com")
    assert user["email"] == "cycle@example.com"
    assert user["roles"] == ["user"]
    assert user["status"] == "active"

    first = await login(auth_client, "cycle@example.com")
    assert first.body["tokenType"] == "Bearer"
    assert first.body["expiresIn"] == runtime.settings.access_token_ttl_seconds
    assert first.body["user"]["id"] == user["id"]
    claims = runtime.codec.verify(first.access)
    assert (claims.sub, claims.typ, claims.role, claims.roles) == (user["id"], "access", "user", ("user",))
    assert claims.email == "cycle@example.com"
    assert claims.exp is not None
    assert {"iss", "aud", "iat", "jti"} <= claims.raw.keys()

    me = await client.get("/api/users/me", headers=first.headers)
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]

    refreshed = await auth_client.post("/refresh", json={"refreshToken": first.refresh})
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refreshToken"] != first.refresh
    assert second["accessToken"] != first.access
    # The old access token lives until it expires; the old refresh token is spent.
    assert (await client.get("/api/users/me", headers=first.headers)).status_code == 200
    await age_rotation(runtime, first.refresh)  # past the grace for racing tabs
    assert_error(await auth_client.post("/refresh", json={"refreshToken": first.refresh}), 401, "REFRESH_TOKEN_REUSED")

    # Reuse revoked the family, so sign in again and log out properly.
    again = await login(auth_client, "cycle@example.com")
    out = await auth_client.post("/logout", headers=again.headers, json={})
    assert out.status_code == 204
    assert out.content == b""
    assert_error(await client.get("/api/users/me", headers=again.headers), 401, "TOKEN_REVOKED")
    assert_error(await auth_client.get("/me", headers=again.headers), 401, "TOKEN_REVOKED")
    assert_error(await auth_client.post("/refresh", json={"refreshToken": again.refresh}), 401, "TOKEN_REVOKED")
    ttl = await runtime.store.ttl(f"blacklist:{runtime.codec.verify(again.access).jti}")
    assert ttl is not None
    assert 0 < ttl <= runtime.settings.access_token_ttl_seconds


async def test_reuse_revokes_the_whole_family(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    s = await signed_up(auth_client, "reuse@example.com")
    r1 = (await auth_client.post("/refresh", json={"refreshToken": s.refresh})).json()
    r2 = (await auth_client.post("/refresh", json={"refreshToken": r1["refreshToken"]})).json()
    await age_rotation(runtime, s.refresh)
    # A thief replays the first token: the family, including the newest token, dies.
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "REFRESH_TOKEN_REUSED")
    assert_error(await auth_client.post("/refresh", json={"refreshToken": r2["refreshToken"]}), 401, "TOKEN_REVOKED")
    # Another login (another family) is untouched.
    other = await login(auth_client, "reuse@example.com")
    assert (await auth_client.post("/refresh", json={"refreshToken": other.refresh})).status_code == 200


async def test_unknown_refresh_token(auth_client: httpx.AsyncClient) -> None:
    assert_error(await auth_client.post("/refresh", json={"refreshToken": "nope"}), 401, "INVALID_TOKEN")


async def test_expired_refresh_token(auth_client: httpx.AsyncClient, runtime: Runtime) -> None:
    s = await signed_up(auth_client, "old@example.com")
    tx = runtime.tx()
    try:
        row = (await tx.session.execute(select(RefreshToken))).scalar_one()
        row.expires_at = row.created_at
        await tx.commit()
    finally:
        await tx.close()
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "TOKEN_EXPIRED")


async def test_refresh_tokens_are_stored_hashed(auth_client: httpx.AsyncClient, runtime: Runtime) -> None:
    s = await signed_up(auth_client, "hashed@example.com")
    tx = runtime.tx()
    try:
        hashes = (await tx.session.execute(select(RefreshToken.token_hash))).scalars().all()
    finally:
        await tx.close()
    assert len(hashes) == 1
    assert hashes[0] != s.refresh
    assert len(hashes[0]) == 64


async def test_login_failure_is_the_same_for_unknown_email_and_wrong_password(auth_client: httpx.AsyncClient) -> None:
    await register(auth_client, "known@example.com")

    def verified(account: str) -> float:
        return REGISTRY.get_sample_value("aihub_password_verifications_total", {"account": account}) or 0.0

    before = verified("known"), verified("unknown")
    wrong = await auth_client.post("/login", json={"email": "known@example.com", "password": "wrong-password"})
    after_wrong = verified("known"), verified("unknown")
    unknown = await auth_client.post("/login", json={"email": "ghost@example.com", "password": "wrong-password"})
    after_unknown = verified("known"), verified("unknown")
    a = assert_error(wrong, 401, "INVALID_CREDENTIALS")
    b = assert_error(unknown, 401, "INVALID_CREDENTIALS")
    assert {k: v for k, v in a.items() if k != "requestId"} == {k: v for k, v in b.items() if k != "requestId"}
    # Both paths pay for one argon2 verification (against a dummy hash when there is no account).
    assert after_wrong == (before[0] + 1, before[1])
    assert after_unknown == (after_wrong[0], after_wrong[1] + 1)


async def test_email_taken_and_password_rules(auth_client: httpx.AsyncClient) -> None:
    await register(auth_client, "taken@example.com")
    assert_error(
        await auth_client.post("/register", json={"email": "TAKEN@example.com", "password": PASSWORD}),
        409,
        "EMAIL_TAKEN",
    )
    short = await auth_client.post("/register", json={"email": "short@example.com", "password": "1234567"})
    assert assert_error(short, 422, "VALIDATION_ERROR")["details"][0]["field"] == "body.password"


async def test_suspended_user_cannot_login_or_refresh(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, admin: Caller, runtime: Runtime
) -> None:
    s = await signed_up(auth_client, "susp@example.com")
    spare = await login(auth_client, "susp@example.com")
    response = await client.patch(f"/api/users/{s.user_id}", headers=admin.headers, json={"status": "suspended"})
    assert response.status_code == 200
    assert_error(
        await auth_client.post("/login", json={"email": s.email, "password": PASSWORD}),
        403,
        "ACCOUNT_SUSPENDED",
    )
    # A wrong password still says only "invalid credentials": the status is not disclosed.
    assert_error(
        await auth_client.post("/login", json={"email": s.email, "password": "not-the-one"}),
        401,
        "INVALID_CREDENTIALS",
    )
    # Suspension revoked every refresh token of the user.
    for token in (s.refresh, spare.refresh):
        assert_error(await auth_client.post("/refresh", json={"refreshToken": token}), 401, "TOKEN_REVOKED")
    assert_error(await client.get("/api/users/me", headers=s.headers), 403, "ACCOUNT_SUSPENDED")
    await client.patch(f"/api/users/{s.user_id}", headers=admin.headers, json={"status": "active"})
    assert (await auth_client.post("/login", json={"email": s.email, "password": PASSWORD})).status_code == 200


async def test_deleted_user_cannot_login_or_refresh(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, admin: Caller
) -> None:
    s = await signed_up(auth_client, "gone@example.com")
    assert (await client.delete(f"/api/users/{s.user_id}", headers=admin.headers)).status_code == 204
    assert_error(
        await auth_client.post("/login", json={"email": s.email, "password": PASSWORD}),
        401,
        "INVALID_CREDENTIALS",
    )
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "TOKEN_REVOKED")


async def test_lockout_after_repeated_failures(auth_client: httpx.AsyncClient, runtime: Runtime) -> None:
    limit = runtime.settings.login_max_failures
    assert limit == 5
    await register(auth_client, "locked@example.com")
    for _ in range(limit):
        bad = await auth_client.post("/login", json={"email": "locked@example.com", "password": "guess-guess"})
        assert_error(bad, 401, "INVALID_CREDENTIALS")
    # Even the right password is refused while the account is locked.
    locked = await auth_client.post("/login", json={"email": "Locked@Example.com", "password": PASSWORD})
    body = assert_error(locked, 429, "TOO_MANY_LOGIN_ATTEMPTS")
    assert 0 < int(locked.headers["retry-after"]) <= runtime.settings.login_lockout_seconds
    assert body["details"]["retryAfterSeconds"] == int(locked.headers["retry-after"])
    # Other accounts are not affected; an unknown email locks the same way (no enumeration).
    await signed_up(auth_client, "free@example.com")
    for _ in range(limit):
        await auth_client.post("/login", json={"email": "nobody@example.com", "password": "guess-guess"})
    assert_error(
        await auth_client.post("/login", json={"email": "nobody@example.com", "password": "x"}),
        429,
        "TOO_MANY_LOGIN_ATTEMPTS",
    )
    # The window ends: the lock lifts.
    await runtime.store.delete(lockout.failures_key("locked@example.com"))
    assert (
        await auth_client.post("/login", json={"email": "locked@example.com", "password": PASSWORD})
    ).status_code == 200


async def test_success_resets_the_failure_count(auth_client: httpx.AsyncClient, runtime: Runtime) -> None:
    await register(auth_client, "reset@example.com")
    for _round in range(3):
        for _ in range(runtime.settings.login_max_failures - 1):
            await auth_client.post("/login", json={"email": "reset@example.com", "password": "guess-guess"})
        await login(auth_client, "reset@example.com")


async def test_me(auth_client: httpx.AsyncClient, admin: Caller) -> None:
    s = await signed_up(auth_client, "me@example.com")
    body = (await auth_client.get("/me", headers=s.headers)).json()
    assert set(body) == {"user", "roles", "permissions"}
    assert body["user"]["id"] == s.user_id
    assert body["roles"] == ["user"]
    assert body["permissions"] == []
    adm = (await auth_client.get("/me", headers=admin.headers)).json()
    assert adm["roles"] == ["admin"]
    assert adm["permissions"] == ["*"]
    assert_error(await auth_client.get("/me"), 401, "UNAUTHORIZED")


async def test_logout_revokes_the_given_refresh_family_only_for_its_owner(
    auth_client: httpx.AsyncClient,
) -> None:
    a = await signed_up(auth_client, "a@example.com")
    a2 = await login(auth_client, "a@example.com")
    b = await signed_up(auth_client, "b@example.com")
    # A logs out of session 1 and names session 2's refresh token too; B's token is not A's to revoke.
    response = await auth_client.post("/logout", headers=a.headers, json={"refreshToken": a2.refresh})
    assert response.status_code == 204
    assert_error(await auth_client.post("/refresh", json={"refreshToken": a.refresh}), 401, "TOKEN_REVOKED")
    assert_error(await auth_client.post("/refresh", json={"refreshToken": a2.refresh}), 401, "TOKEN_REVOKED")
    b2 = await login(auth_client, "b@example.com")
    assert (await auth_client.post("/logout", headers=b2.headers, json={"refreshToken": b.refresh})).status_code == 204
    # B's first session was named, and is B's own: revoked. Without a body, logout works too.
    b3 = await login(auth_client, "b@example.com")
    assert (await auth_client.post("/logout", headers=b3.headers)).status_code == 204
    assert_error(await auth_client.post("/refresh", json={"refreshToken": b3.refresh}), 401, "TOKEN_REVOKED")


async def test_logout_of_one_user_leaves_another_alone(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    a = await signed_up(auth_client, "one@example.com")
    b = await signed_up(auth_client, "two@example.com")
    await auth_client.post("/logout", headers=a.headers, json={"refreshToken": b.refresh})
    assert (await client.get("/api/users/me", headers=b.headers)).status_code == 200
    assert (await auth_client.post("/refresh", json={"refreshToken": b.refresh})).status_code == 200


async def _audit_rows(runtime: Runtime) -> list[AuditLog]:
    tx = runtime.tx()
    try:
        rows = list((await tx.session.execute(select(AuditLog).order_by(AuditLog.created_at))).scalars().all())
        tx.session.expunge_all()  # keep the loaded values readable after the session closes
        return rows
    finally:
        await tx.close()


async def test_every_auth_event_is_audited_without_secrets(
    auth_client: httpx.AsyncClient, runtime: Runtime, admin: Caller, capsys: pytest.CaptureFixture[str]
) -> None:
    s = await signed_up(auth_client, "audit@example.com")
    await auth_client.post("/login", json={"email": "audit@example.com", "password": "wrong-password"})
    await auth_client.post("/login", json={"email": "nobody@example.com", "password": "wrong-password"})
    r = (await auth_client.post("/refresh", json={"refreshToken": s.refresh})).json()
    await age_rotation(runtime, s.refresh)
    await auth_client.post("/refresh", json={"refreshToken": s.refresh})  # reuse
    created = (
        await auth_client.post(
            "/service-tokens", headers=admin.headers, json={"name": "bot", "scopes": ["usage:write"]}
        )
    ).json()
    await auth_client.delete(f"/service-tokens/{created['id']}", headers=admin.headers)
    fresh = await login(auth_client, "audit@example.com")
    await auth_client.post("/logout", headers=fresh.headers)

    rows = await _audit_rows(runtime)
    actions = [row.action for row in rows]
    for action in (
        "auth.register",
        "auth.login",
        "auth.login_failed",
        "auth.refresh",
        "auth.refresh_reused",
        "service_token.create",
        "service_token.revoke",
        "auth.logout",
    ):
        assert action in actions, actions
    assert actions.count("auth.login_failed") == 2
    secrets = [
        PASSWORD,
        "wrong-password",
        s.refresh,
        s.access,
        r["refreshToken"],
        r["accessToken"],
        created["token"],
        fresh.access,
        fresh.refresh,
    ]
    dump = repr([(row.before, row.after, row.entity_id, row.actor_id) for row in rows])
    captured = capsys.readouterr()
    for secret in secrets:
        assert secret not in dump
        assert secret not in captured.out
        assert secret not in captured.err
    verify = await auth_client.get("/me", headers=admin.headers)
    assert verify.status_code == 200


async def test_register_creates_credit_account_and_user_role(auth_client: httpx.AsyncClient, runtime: Runtime) -> None:
    from aihub.models import CreditAccount

    user = await register(auth_client, "acct@example.com")
    tx = runtime.tx()
    try:
        account = await tx.session.get(CreditAccount, uuid.UUID(user["id"]))
        assert account is not None
        assert account.balance == 0
    finally:
        await tx.close()


async def test_login_of_user_created_by_admin_without_password(
    auth_client: httpx.AsyncClient, runtime: Runtime
) -> None:
    caller = await create_user(runtime, email="nopass@example.com")
    assert caller.email
    response = await auth_client.post("/login", json={"email": "nopass@example.com", "password": "anything-1"})
    assert_error(response, 401, "INVALID_CREDENTIALS")


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "requestId"}


async def test_password_change_ends_other_sessions(auth_client: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    s = await signed_up(auth_client, "change@example.com")
    changed = await client.patch(
        "/api/users/me", headers=s.headers, json={"password": "a-new-password", "currentPassword": PASSWORD}
    )
    assert changed.status_code == 200
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "TOKEN_REVOKED")
    await login(auth_client, "change@example.com", "a-new-password")
