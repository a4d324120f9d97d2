"""Routing of the default table, prefix strip, passthrough of methods, bodies, queries, headers,
streaming both ways and the body limit, against real upstream servers on loopback."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from aihub.config import Settings
from aihub.gateway.routing import default_table, load_table
from aihub.kit.jwt import TokenCodec
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings

CORE_PATHS = [
    "/api/users/me",
    "/api/credits/x",
    "/api/roles",
    "/api/permissions/check",
    "/api/usage/events",
    "/api/pricing/models",
    "/api/quotas",
    "/api/analytics/daily",
    "/api/billing/invoices",
    "/api/promo-codes/redeem",
    "/api/sora/sessions",
    "/api/audit-logs",
    "/api/keys",
]


@pytest.mark.parametrize("path", CORE_PATHS)
async def test_core_routes_keep_the_path(
    path: str,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = codec.issue(sub="u1", role="user")
    async with http.get(gw.url + path, headers=bearer(token)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["upstream"] == "core"
    assert body["path"] == path


@pytest.mark.parametrize(
    ("path", "upstream", "seen"),
    [
        ("/api/auth/login", "auth", "/login"),
        ("/api/auth/.well-known/jwks.json", "auth", "/.well-known/jwks.json"),
        ("/api/auth/me", "auth", "/me"),
        ("/api/mcp/tools", "mcp", "/api/mcp/tools"),
        ("/api/ws/info", "mcp", "/api/ws/info"),
    ],
)
async def test_auth_strips_its_prefix_and_mcp_keeps_it(
    path: str,
    upstream: str,
    seen: str,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    async with http.get(gw.url + path, headers=bearer(codec.issue(sub="u1", role="user"))) as resp:
        body = await resp.json()
    assert (body["upstream"], body["path"]) == (upstream, seen)


async def test_unknown_path_is_404_in_the_error_shape(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    async with http.get(gw.url + "/api/nothing-here", headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.status == 404
        body = await resp.json()
        assert resp.headers["X-Request-Id"] == "abc-123"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert body == {"code": "NOT_FOUND", "message": "No route for this path", "requestId": "abc-123"}
    async with http.get(gw.url + "/api/usersx") as resp:  # whole segments only
        assert resp.status == 404


async def test_method_body_query_and_identity_headers_pass_through(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = codec.issue(sub="user-42", role="manager")
    headers = {**bearer(token), "X-User-Id": "admin-spoof", "X-User-Role": "admin", "Content-Type": "application/json"}
    query = "q=a%20b%26c&x=%2F%3F&empty="
    async with http.patch(
        URL(gw.url + "/api/users/me?" + query, encoded=True), data=b'{"displayName":"Zo\xc3\xa9"}', headers=headers
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["method"] == "PATCH"
    assert body["query"] == query
    assert body["body"] == '{"displayName":"Zoé"}'
    seen = {k.lower(): v for k, v in body["headers"].items()}
    assert seen["x-user-id"] == "user-42"
    assert seen["x-user-role"] == "manager"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == gw.url.removeprefix("http://")
    assert len(seen["x-request-id"]) >= 16


async def test_repeated_response_headers_are_kept(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    async with http.get(gw.url + "/api/users/cookies", headers=bearer(codec.issue(sub="u", role="user"))) as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert resp.headers.getall("X-Multi") == ["one", "two"]


async def test_upstream_status_codes_pass_through(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = bearer(codec.issue(sub="u", role="admin"))
    for code in (201, 404, 409, 503):
        async with http.get(gw.url + f"/api/users/status/{code}", headers=token) as resp:
            assert resp.status == code


async def test_a_streamed_response_reaches_the_client_before_the_upstream_finishes(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    gate = upstreams["mcp"].stream_gate = asyncio.Event()
    async with http.get(gw.url + "/api/mcp/stream", headers=bearer(codec.issue(sub="u", role="admin"))) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        # The upstream holds the rest back until the gate opens: the first event can only be
        # here because the gateway passed it on before the upstream finished.
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
        assert first == b"data: 0\n\n" and not gate.is_set()
        gate.set()
        rest = await resp.content.read()
    assert rest == b"".join(f"data: {i}\n\n".encode() for i in range(1, 5))


async def test_an_upload_over_the_limit_is_cut_with_413(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, max_body_bytes=256 * 1024))
    total = 4 * 1024 * 1024

    async def body() -> object:
        for _ in range(total // 65_536):
            yield b"x" * 65_536
            await asyncio.sleep(0)

    async with http.post(
        gw.url + "/api/users/upload", data=body(), headers=bearer(codec.issue(sub="u", role="admin"))
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "PAYLOAD_TOO_LARGE"
    await asyncio.sleep(0.2)
    # Nothing reached the upstream whole (it may have seen nothing at all: the cut can come first).
    assert max(upstreams["core"].uploaded, default=0) < total
    # A declared length over the limit is refused before any byte goes upstream.
    before = len(upstreams["core"].uploaded)
    async with http.post(
        gw.url + "/api/users/upload", data=b"y" * (300 * 1024), headers=bearer(codec.issue(sub="u", role="admin"))
    ) as resp:
        assert resp.status == 413
    assert len(upstreams["core"].uploaded) == before


async def test_a_large_upload_under_the_limit_streams_through(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, max_body_bytes=4 * 1024 * 1024))
    async with http.post(
        gw.url + "/api/users/upload",
        data=io.BytesIO(b"z" * (3 * 1024 * 1024)),
        headers=bearer(codec.issue(sub="u", role="admin")),
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["received"] == 3 * 1024 * 1024


async def test_upstream_down_is_502_and_slow_is_504(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(
        gateway_settings(upstreams, gateway_timeout_seconds=0.5, gateway_health_interval_seconds=60)
    )
    token = bearer(codec.issue(sub="u", role="admin"))
    async with http.get(gw.url + "/api/users/slow", headers=token) as resp:
        assert resp.status == 504
        assert (await resp.json())["code"] == "GATEWAY_TIMEOUT"
    await upstreams["core"].stop()
    async with http.post(gw.url + "/api/users", json={}, headers=token) as resp:
        assert resp.status == 502
        assert (await resp.json())["code"] == "BAD_GATEWAY"


async def test_route_file_replaces_the_default_table(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "upstreams:\n  billing: [http://127.0.0.1:9001, http://127.0.0.1:9002]\n"
        "routes:\n"
        "  - {prefix: /v1/pay, upstream: billing, strip: true, auth: optional, max_body_bytes: 2048, timeout: 3}\n"
        "  - {prefix: /v1, upstream: core, auth: public, websocket: true}\n"
    )
    table = load_table(Settings(env="test", gateway_routes=str(path)))
    route = table.match("/v1/pay/x")
    assert route is not None and route.upstream == "billing" and route.upstream_path("/v1/pay/x") == "/x"
    assert route.auth == "optional" and route.max_body_bytes == 2048 and route.timeout == 3
    assert table.upstreams["billing"] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    other = table.match("/v1/other")
    assert other is not None and other.upstream == "core" and other.websocket
    assert table.match("/v2") is None
    toml = tmp_path / "routes.toml"
    toml.write_text('[[routes]]\nprefix = "/x"\nupstream = "mcp"\n')
    assert load_table(Settings(env="test", gateway_routes=str(toml))).match("/x/y") is not None


def test_default_table_public_routes() -> None:
    table = default_table(Settings(env="test"))
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh", "/api/auth/.well-known/jwks.json"):
        route = table.match(path)
        assert route is not None and route.auth_for("POST") == "public", path
    pricing = table.match("/api/pricing")
    assert pricing is not None and pricing.auth_for("GET") == "public" and pricing.auth_for("POST") == "jwt"
    assert table.match("/api/auth/logout").auth_for("POST") == "jwt"  # type: ignore[union-attr]
    assert table.match("/api/sora/x").auth == "optional"  # type: ignore[union-attr]


async def test_dot_segments_are_refused(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = bearer(codec.issue(sub="u", role="admin"))
    for raw in ("/api/users/../auth/me", "/api/users/%2e%2e/auth/me", "/api/users/./me"):
        async with http.get(URL(gw.url + raw, encoded=True), headers=token) as resp:
            assert resp.status in (400, 404), raw
            assert "code" in await resp.json()
    assert upstreams["core"].hits == 0 and upstreams["auth"].hits == 0
