"""Sessions that must end, and sessions that must not: refresh-token reuse revokes the family's
access tokens too, two tabs refreshing at once keep their session, and the password check of
``PATCH /api/users/me`` sits behind the login lockout. Through the HTTP stack of auth and core,
on PostgreSQL + Redis and SQLite + memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from aihub.config import Settings
from aihub.kit.jwt import family_blacklist_key
from aihub.kit.runtime import Runtime
from tests.auth.conftest import PASSWORD, age_rotation, assert_error, login, signed_up
from tests.conftest import _auth_app


async def test_reuse_revokes_the_familys_access_tokens(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    s = await signed_up(auth_client, "stolen@example.com")
    other = await login(auth_client, "stolen@example.com")  # another device: another family
    rotated = (await auth_client.post("/refresh", json={"refreshToken": s.refresh})).json()
    new_access = {"Authorization": f"Bearer {rotated['accessToken']}"}
    assert (await client.get("/api/users/me", headers=new_access)).status_code == 200
    await age_rotation(runtime, s.refresh)
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "REFRESH_TOKEN_REUSED")
    # Every access token of the family is dead at once, in core and in auth, old and new.
    for headers in (s.headers, new_access):
        assert_error(await client.get("/api/users/me", headers=headers), 401, "TOKEN_REVOKED")
        assert_error(await auth_client.get("/me", headers=headers), 401, "TOKEN_REVOKED")
    # The other device's session is untouched.
    assert (await client.get("/api/users/me", headers=other.headers)).status_code == 200
    assert (await auth_client.post("/refresh", json={"refreshToken": other.refresh})).status_code == 200
    # The family entry lives as long as the family's newest access token can, not forever.
    sid = runtime.codec.verify(rotated["accessToken"]).raw["sid"]
    ttl = await runtime.store.ttl(family_blacklist_key(sid))
    assert ttl is not None and 0 < ttl <= runtime.settings.access_token_ttl_seconds + runtime.codec.leeway + 1


async def test_logout_ends_the_sessions_other_access_tokens(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    s = await signed_up(auth_client, "tabs@example.com")
    rotated = (await auth_client.post("/refresh", json={"refreshToken": s.refresh})).json()
    newer = {"Authorization": f"Bearer {rotated['accessToken']}"}
    assert (await auth_client.post("/logout", headers=newer, json={})).status_code == 204
    # The tab still holding the session's earlier access token is signed out as well.
    assert_error(await client.get("/api/users/me", headers=s.headers), 401, "TOKEN_REVOKED")


async def test_a_second_refresh_within_the_grace_returns_the_same_pair(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    s = await signed_up(auth_client, "twotabs@example.com")
    first = await auth_client.post("/refresh", json={"refreshToken": s.refresh})
    second = await auth_client.post("/refresh", json={"refreshToken": s.refresh})
    assert first.status_code == second.status_code == 200, second.text
    a, b = first.json(), second.json()
    assert (a["refreshToken"], a["accessToken"]) == (b["refreshToken"], b["accessToken"])
    assert b["user"]["id"] == s.user_id and b["tokenType"] == "Bearer"
    assert 0 < b["expiresIn"] <= runtime.settings.access_token_ttl_seconds
    headers = {"Authorization": f"Bearer {b['accessToken']}"}
    assert (await client.get("/api/users/me", headers=headers)).status_code == 200
    # After the grace the same token is reuse again: the family (and the pair) dies.
    await age_rotation(runtime, s.refresh)
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "REFRESH_TOKEN_REUSED")
    assert_error(await auth_client.post("/refresh", json={"refreshToken": b["refreshToken"]}), 401, "TOKEN_REVOKED")
    assert_error(await client.get("/api/users/me", headers=headers), 401, "TOKEN_REVOKED")


async def test_the_grace_never_revives_a_revoked_family(auth_client: httpx.AsyncClient) -> None:
    s = await signed_up(auth_client, "gracelogout@example.com")
    rotated = (await auth_client.post("/refresh", json={"refreshToken": s.refresh})).json()
    headers = {"Authorization": f"Bearer {rotated['accessToken']}"}
    assert (await auth_client.post("/logout", headers=headers, json={})).status_code == 204
    # Within the grace, but the family was revoked: reuse, not a replay of the pair.
    assert_error(await auth_client.post("/refresh", json={"refreshToken": s.refresh}), 401, "REFRESH_TOKEN_REUSED")


@pytest.fixture
async def no_grace_auth(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    rt = Runtime.build(settings.model_copy(update={"refresh_reuse_grace_seconds": 0}))
    transport = httpx.ASGITransport(app=_auth_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as c:
        yield c
    await rt.close()


async def test_grace_zero_turns_the_replay_off(no_grace_auth: httpx.AsyncClient) -> None:
    s = await signed_up(no_grace_auth, "strict@example.com")
    assert (await no_grace_auth.post("/refresh", json={"refreshToken": s.refresh})).status_code == 200
    assert_error(await no_grace_auth.post("/refresh", json={"refreshToken": s.refresh}), 401, "REFRESH_TOKEN_REUSED")


async def _change(client: httpx.AsyncClient, headers: dict[str, str], current: str) -> httpx.Response:
    body = {"password": "a-brand-new-password", "currentPassword": current}
    return await client.patch("/api/users/me", headers=headers, json=body)


async def test_password_change_is_behind_the_login_lockout(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    limit = runtime.settings.login_max_failures
    s = await signed_up(auth_client, "oracle@example.com")
    for i in range(limit):
        assert_error(await _change(client, s.headers, f"guess-{i}"), 403, "INVALID_CREDENTIALS")
    # Locked: even the right current password is refused, here and at login (one counter).
    locked = assert_error(await _change(client, s.headers, PASSWORD), 429, "TOO_MANY_LOGIN_ATTEMPTS")
    assert locked["details"]["retryAfterSeconds"] > 0
    assert_error(
        await auth_client.post("/login", json={"email": s.email, "password": PASSWORD}), 429, "TOO_MANY_LOGIN_ATTEMPTS"
    )
    assert "Retry-After" in (await _change(client, s.headers, PASSWORD)).headers
    # The password is still the old one: nothing changed while locked.
    assert_error(await _change(client, s.headers, "a-brand-new-password"), 429, "TOO_MANY_LOGIN_ATTEMPTS")


async def test_failed_logins_lock_the_password_change_and_success_resets(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    limit = runtime.settings.login_max_failures
    s = await signed_up(auth_client, "both@example.com")
    for i in range(limit - 1):
        await auth_client.post("/login", json={"email": s.email, "password": f"wrong-{i}"})
    # One attempt left: a correct current password passes and clears the count.
    changed = await _change(client, s.headers, PASSWORD)
    assert changed.status_code == 200, changed.text
    fresh = await login(auth_client, s.email, "a-brand-new-password")
    for i in range(limit):
        await auth_client.post("/login", json={"email": s.email, "password": f"wrong-again-{i}"})
    assert_error(await _change(client, fresh.headers, "a-brand-new-password"), 429, "TOO_MANY_LOGIN_ATTEMPTS")
    # A display-name change needs no password and is not locked.
    renamed = await client.patch("/api/users/me", headers=fresh.headers, json={"displayName": "Still Me"})
    assert renamed.status_code == 200
