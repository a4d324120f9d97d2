"""CORS, security headers, IP blocks (static, admin API, automatic bans) and trusted proxies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from aihub.gateway.headers import GENERATED_CSP
from aihub.gateway.ipblock import client_ip
from aihub.kit.jwt import TokenCodec
from aihub.kit.store import Store
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings

ORIGIN = "https://app.example.com"


async def test_preflight_for_an_allowed_and_a_refused_origin(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, cors_origins=f"{ORIGIN},*"))
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with http.options(gw.url + "/api/users/me", headers={"Origin": ORIGIN, **preflight}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert resp.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert resp.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
    async with http.options(gw.url + "/api/users/me", headers={"Origin": "https://evil.example", **preflight}) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert upstreams["core"].hits == 0  # preflights never reach the upstream


async def test_actual_responses_carry_cors_and_security_headers(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, cors_origins=ORIGIN))
    headers = {**bearer(codec.issue(sub="c", role="user")), "Origin": ORIGIN}
    async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
        exposed = resp.headers["Access-Control-Expose-Headers"]
        assert "X-Request-Id" in exposed and "RateLimit-Remaining" in exposed
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert resp.headers["Cross-Origin-Resource-Policy"] == "same-site"
        assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "Content-Security-Policy" not in resp.headers  # proxied: the upstream's business
    async with http.get(gw.url + "/api/users/me", headers={**headers, "Origin": "https://evil.example"}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert resp.headers.get("Access-Control-Allow-Origin") != "*"


async def test_the_gateways_own_answers_carry_its_csp_and_the_upstreams_do_not(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    """An upstream's page keeps its own policy, streamed or not; whatever the gateway makes
    (a preflight, a redirect, an error, even one that ends a request already on its way
    upstream) gets the gateway's."""
    gw = await start_gateway(gateway_settings(upstreams, cors_origins=ORIGIN, max_body_bytes=1024))
    headers = bearer(codec.issue(sub="csp", role="user"))
    async with http.get(gw.url + "/api/users/stream", headers=headers) as resp:
        assert resp.status == 200 and "Content-Security-Policy" not in resp.headers
    async with http.get(gw.url + "/api/users/status/500", headers=headers) as resp:
        assert resp.status == 500 and "Content-Security-Policy" not in resp.headers  # the upstream's own 500
    own = [
        http.options(gw.url + "/api/users/me", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}),
        http.get(gw.url + "/", allow_redirects=False),
        http.get(gw.url + "/api/users/me"),  # 401 before any hop
        http.post(gw.url + "/api/users/upload", data=_chunks(64 * 1024), headers=headers),  # 413 mid-upload
    ]
    for pending in own:
        async with pending as resp:
            assert resp.status in (204, 308, 401, 413)
            assert resp.headers["Content-Security-Policy"] == GENERATED_CSP, resp.status
            assert resp.headers["X-Frame-Options"] == "DENY"
    await upstreams["mcp"].stop()  # refused now: the gateway's 502 (or 503) replaces the answer
    async with http.get(gw.url + "/api/mcp/anything", headers=headers) as resp:
        assert resp.status in (502, 503)
        assert resp.headers["Content-Security-Policy"] == GENERATED_CSP


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 4096):
        yield b"x" * 4096
        await asyncio.sleep(0)


async def test_static_deny_list(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, gateway_deny_cidrs="127.0.0.0/8"))
    async with http.get(gw.url + "/api/pricing") as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "FORBIDDEN"


async def test_admin_api_blocks_lists_and_unblocks(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    # The admin comes through a trusted proxy, so the blocked "client" is a different address.
    gw = await start_gateway(gateway_settings(upstreams, gateway_trusted_proxies="127.0.0.1/32"), store=store)
    admin = bearer(codec.issue(sub="boss", role="admin"))
    user = bearer(codec.issue(sub="pleb", role="user"))
    api = gw.url + "/api/gateway/blocked-ips"
    async with http.post(api, json={"ip": "203.0.113.0/24", "ttlSeconds": 60}, headers=user) as resp:
        assert resp.status == 403
    block = {"ip": "203.0.113.0/24", "ttlSeconds": 60, "reason": "abuse"}
    async with http.post(api, json=block, headers=admin) as resp:
        assert resp.status == 201
        assert (await resp.json())["ip"] == "203.0.113.0/24"
    async with http.post(api, json={"ip": "not-an-ip"}, headers=admin) as resp:
        assert resp.status == 422
        assert (await resp.json())["code"] == "VALIDATION_ERROR"
    async with http.get(api, headers=admin) as resp:
        items = (await resp.json())["items"]
    assert [(i["ip"], i["reason"]) for i in items] == [("203.0.113.0/24", "abuse")]
    async with http.get(gw.url + "/api/pricing", headers={"X-Forwarded-For": "203.0.113.7"}) as resp:
        assert resp.status == 403
    async with http.get(gw.url + "/api/pricing", headers={"X-Forwarded-For": "198.51.100.1"}) as resp:
        assert resp.status == 200
    async with http.delete(api + "/203.0.113.0%2F24", headers=admin) as resp:
        assert resp.status == 204
    async with http.get(gw.url + "/api/pricing", headers={"X-Forwarded-For": "203.0.113.7"}) as resp:
        assert resp.status == 200
    async with http.delete(api + "/203.0.113.0%2F24", headers=admin) as resp:
        assert resp.status == 404


async def test_automatic_ban_after_repeated_failed_authentications(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    settings = gateway_settings(upstreams, gateway_trusted_proxies="127.0.0.1/32", gateway_ban_after_auth_failures=3)
    gw = await start_gateway(settings, store=store)
    attacker = {"X-Forwarded-For": "192.0.2.66", "Authorization": "Bearer garbage"}
    statuses = []
    for _ in range(5):
        async with http.get(gw.url + "/api/users/me", headers=attacker) as resp:
            statuses.append(resp.status)
    assert statuses == [401, 401, 401, 403, 403]
    async with http.get(gw.url + "/api/pricing", headers={"X-Forwarded-For": "192.0.2.67"}) as resp:
        assert resp.status == 200  # a neighbour is not banned


async def test_automatic_ban_after_repeated_rate_limit_rejections(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    settings = gateway_settings(
        upstreams, gateway_trusted_proxies="127.0.0.1/32", rate_limit_guest=2, gateway_ban_after_rate_limited=3
    )
    gw = await start_gateway(settings, store=store)
    statuses = []
    for _ in range(7):
        async with http.get(gw.url + "/api/pricing", headers={"X-Forwarded-For": "192.0.2.10"}) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 429, 429, 429, 403, 403]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    untrusted = await start_gateway(gateway_settings(upstreams))
    trusted = await start_gateway(gateway_settings(upstreams, gateway_trusted_proxies="127.0.0.1/32"))
    headers = {**bearer(codec.issue(sub="p", role="user")), "X-Forwarded-For": "198.51.100.9"}
    async with http.get(untrusted.url + "/api/users/me", headers=headers) as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's own claim is dropped
    async with http.get(trusted.url + "/api/users/me", headers=headers) as resp:
        seen = {k.lower(): v for k, v in (await resp.json())["headers"].items()}
    assert seen["x-forwarded-for"] == "198.51.100.9, 127.0.0.1"


def test_client_ip_walks_forwarded_for_from_the_right() -> None:
    from ipaddress import ip_network

    trusted = [ip_network("10.0.0.0/8")]
    assert client_ip("10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.5", trusted) == "2.2.2.2"
    assert client_ip("10.0.0.1", "spoofed, 3.3.3.3", trusted) == "3.3.3.3"
    assert client_ip("8.8.8.8", "1.1.1.1", trusted) == "8.8.8.8"  # untrusted peer: its header is ignored
    assert client_ip("10.0.0.1", None, trusted) == "10.0.0.1"
