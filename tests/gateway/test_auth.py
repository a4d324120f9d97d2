"""Token checks at the gateway: the right 401 for each broken token, public routes, identity headers."""

from __future__ import annotations

import time

import aiohttp
import jwt as pyjwt
import pytest

from aihub.kit.jwt import TokenCodec, blacklist_key, family_blacklist_key
from aihub.kit.store import Store
from tests.gateway.conftest import OpenGateway, Upstream, bearer


async def _code(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with http.get(url, headers=headers) as resp:
        body = await resp.json()
        return resp.status, body.get("code")


async def test_broken_tokens_get_the_right_401(
    upstreams: dict[str, Upstream],
    open_gateway: OpenGateway,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(store=store)
    url = gw.url + "/api/users/me"
    expired = codec.issue(sub="u", role="user", now=int(time.time()) - 3600)
    forged = pyjwt.encode(
        {
            "sub": "u",
            "role": "admin",
            "typ": "access",
            "jti": "j",
            "iat": int(time.time()),
            "exp": int(time.time()) + 600,
            "iss": "aihub-auth",
            "aud": "aihub",
        },
        "not-the-secret-at-all-0123456789-abcdef",
        algorithm="HS256",
    )
    none_alg = pyjwt.encode({"sub": "u", "role": "admin"}, key=None, algorithm="none")  # type: ignore[arg-type]
    refresh = codec.issue(sub="u", role="user", typ="refresh")
    assert await _code(http, url, {}) == (401, "UNAUTHORIZED")
    assert await _code(http, url, {"Authorization": "Basic abc"}) == (401, "UNAUTHORIZED")
    assert await _code(http, url, bearer("not.a.jwt")) == (401, "INVALID_TOKEN")
    assert await _code(http, url, bearer(expired)) == (401, "TOKEN_EXPIRED")
    assert await _code(http, url, bearer(forged)) == (401, "INVALID_TOKEN")
    assert await _code(http, url, bearer(none_alg)) == (401, "INVALID_TOKEN")
    assert await _code(http, url, bearer(refresh)) == (401, "INVALID_TOKEN")
    assert upstreams["core"].hits == 0  # the gateway answered every one itself


async def test_a_blacklisted_token_is_revoked(
    open_gateway: OpenGateway,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(store=store)
    token = codec.issue(sub="u", role="admin", jti="jti-to-revoke")
    assert (await _code(http, gw.url + "/api/users/me", bearer(token)))[0] == 200
    # What the auth service's logout writes (kit.jwt.blacklist_key, TTL = exp - now).
    await store.set(blacklist_key("jti-to-revoke"), "1", ttl=900)
    assert await _code(http, gw.url + "/api/users/me", bearer(token)) == (401, "TOKEN_REVOKED")
    # Also with limits off (the blacklist does not depend on rate limiting).
    gw2 = await open_gateway(rate_limit_enabled=False, store=store)
    assert await _code(http, gw2.url + "/api/users/me", bearer(token)) == (401, "TOKEN_REVOKED")


async def test_a_revoked_refresh_family_revokes_its_access_tokens(
    open_gateway: OpenGateway,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(store=store)
    family, other = "7f0c5d52-5d1c-4c52-9a39-0d1f6b1c2a10", "0b9f3d1e-2c6a-4f7b-8e5d-4a3c2b1a0f9e"
    tokens = [codec.issue(sub="u", role="user", extra={"sid": family}) for _ in range(2)]
    bystander = codec.issue(sub="u", role="user", extra={"sid": other})
    for token in (*tokens, bystander):
        assert (await _code(http, gw.url + "/api/users/me", bearer(token)))[0] == 200
    # What auth writes when a refresh token of this family is reused (kit.jwt.family_blacklist_key).
    await store.set(family_blacklist_key(family), "1", ttl=900)
    for token in tokens:
        assert await _code(http, gw.url + "/api/users/me", bearer(token)) == (401, "TOKEN_REVOKED")
    assert (await _code(http, gw.url + "/api/users/me", bearer(bystander)))[0] == 200
    gw2 = await open_gateway(rate_limit_enabled=False, store=store)
    assert await _code(http, gw2.url + "/api/users/me", bearer(tokens[0])) == (401, "TOKEN_REVOKED")


@pytest.mark.parametrize(
    ("method", "path", "seen"),
    [
        ("POST", "/api/auth/register", "/register"),
        ("POST", "/api/auth/login", "/login"),
        ("POST", "/api/auth/refresh", "/refresh"),
        ("GET", "/api/auth/.well-known/jwks.json", "/.well-known/jwks.json"),
        ("GET", "/api/pricing", "/api/pricing"),
        ("GET", "/api/sora/sessions/current", "/api/sora/sessions/current"),
    ],
)
async def test_public_routes_need_no_token(
    method: str,
    path: str,
    seen: str,
    open_gateway: OpenGateway,
    http: aiohttp.ClientSession,
) -> None:
    gw = await open_gateway()
    async with http.request(method, gw.url + path, json={}, headers={"X-User-Id": "spoof"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["path"] == seen
    assert "x-user-id" not in {k.lower() for k in body["headers"]}


async def test_pricing_writes_still_need_a_token(open_gateway: OpenGateway, http: aiohttp.ClientSession) -> None:
    gw = await open_gateway()
    async with http.post(gw.url + "/api/pricing", json={}) as resp:
        assert resp.status == 401


async def test_health_is_public_and_ready_reports_upstreams(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    gw = await open_gateway()
    async with http.get(gw.url + "/health") as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    async with http.get(gw.url + "/health/ready") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body == {
        "status": "ok",
        "checks": {
            "redis": "memory",
            "upstreams": {name: {"healthy": 1, "total": 1} for name in ("auth", "core", "mcp")},
            "optional": ["mcp"],  # not part of aihub: reported, never the reason for "degraded"
        },
    }
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert "aihub_gateway_requests_total" in text and "aihub_gateway_upstream_healthy" in text


async def test_metrics_refused_from_other_addresses(open_gateway: OpenGateway, http: aiohttp.ClientSession) -> None:
    gw = await open_gateway(metrics_allow="10.0.0.0/8")
    async with http.get(gw.url + "/metrics") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "FORBIDDEN"
