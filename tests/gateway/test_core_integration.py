"""The gateway in front of the real core service (uvicorn on loopback), sharing its Redis."""

from __future__ import annotations

import aiohttp

from aihub.kit.jwt import blacklist_key
from tests.auth.conftest import age_rotation
from tests.conftest import LiveServer, create_user
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings


async def test_real_core_behind_the_gateway(
    live_core: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    rt = live_core.runtime
    caller = await create_user(rt, roles=["user"])
    gw = await start_gateway(gateway_settings(upstreams, core_url=live_core.url), store=rt.store)
    headers = {**bearer(caller.token), "X-User-Id": "00000000-0000-0000-0000-000000000000", "X-Request-Id": "it-1"}
    async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "it-1"  # the same ID end to end
        assert resp.headers["RateLimit-Limit"] == "60"
        body = await resp.json()
    assert body["id"] == caller.id and body["email"] == caller.email
    # Logout writes the blacklist key in the shared Redis; the gateway refuses the token at once.
    claims = rt.codec.verify(caller.token)
    await rt.store.set(blacklist_key(claims.jti), "1", ttl=600)
    async with http.get(gw.url + "/api/users/me", headers=bearer(caller.token)) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "TOKEN_REVOKED"


async def test_whole_system_logout_through_auth_is_refused_at_the_gateway(
    live_core: LiveServer,
    live_auth: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    rt = live_core.runtime
    settings = gateway_settings(upstreams, core_url=live_core.url, auth_url=live_auth.url)
    gw = await start_gateway(settings, store=rt.store)
    account = {"email": "Whole.System@Example.com", "password": "long-enough-1"}
    async with http.post(gw.url + "/api/auth/register", json=account) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(gw.url + "/api/auth/login", json=account) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    headers = bearer(tokens["accessToken"])
    async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["email"] == "whole.system@example.com"
    async with http.get(gw.url + "/api/credits/balance", headers=headers) as resp:
        assert (await resp.json())["balance"] == 0  # registration opened the credit account
    async with http.post(gw.url + "/api/auth/logout", headers=headers, json={}) as resp:
        assert resp.status == 204, await resp.text()
    async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "TOKEN_REVOKED"
    async with http.post(gw.url + "/api/auth/refresh", json={"refreshToken": tokens["refreshToken"]}) as resp:
        assert resp.status == 401  # the refresh family went with the logout


async def test_refresh_reuse_is_refused_at_the_gateway_for_the_whole_family(
    live_core: LiveServer,
    live_auth: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    """A thief replays a spent refresh token (after the grace): the family's access tokens stop
    at the gateway, not only its refresh tokens."""
    rt = live_core.runtime
    settings = gateway_settings(upstreams, core_url=live_core.url, auth_url=live_auth.url)
    gw = await start_gateway(settings, store=rt.store)
    account = {"email": "thief.target@example.com", "password": "long-enough-1"}
    async with http.post(gw.url + "/api/auth/register", json=account) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(gw.url + "/api/auth/login", json=account) as resp:
        first = await resp.json()
    async with http.post(gw.url + "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}) as resp:
        rotated = await resp.json()
    for access in (first["accessToken"], rotated["accessToken"]):
        async with http.get(gw.url + "/api/credits/balance", headers=bearer(access)) as resp:
            assert resp.status == 200
    await age_rotation(rt, first["refreshToken"])
    async with http.post(gw.url + "/api/auth/refresh", json={"refreshToken": first["refreshToken"]}) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "REFRESH_TOKEN_REUSED"
    for access in (first["accessToken"], rotated["accessToken"]):
        async with http.get(gw.url + "/api/credits/balance", headers=bearer(access)) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "TOKEN_REVOKED"
