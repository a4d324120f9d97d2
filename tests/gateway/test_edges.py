"""The gateway's edges (issue 13, items 7-12 and 22), each through a real gateway on loopback.

Paths are normalised once before any rule sees them; compressed bodies are decoded under the
body limit; a request ID that cannot be echoed is replaced; requests aiohttp cannot parse get
the error shape and never an echo of their bytes; no Location names an internal address; a
client cannot mint rate-limit buckets; readiness judges aihub by its own dependencies.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import uuid
import zlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from aihub.kit.jwt import TokenCodec
from aihub.kit.store import Store
from tests.conftest import LiveServer, create_user
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings

SECURITY = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Strict-Transport-Security")


def _error_shape(body: dict[str, object], code: str) -> None:
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["requestId"], str) and body["requestId"]


# ------------------------------------------------------------------ 7: one normalised path


async def test_percent_encoded_paths_get_the_rules_of_the_path_they_mean(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    settings = gateway_settings(upstreams, rate_limit_login=2, rate_limit_register=2, rate_limit_promo_redeem=2)
    gw = await start_gateway(settings, store=store)
    # Public login/register routes (no token needed), their own strict limit, the decoded path upstream.
    for dodge, meant in (("/api/auth/%6cogin", "/login"), ("/api/auth/%72egister", "/register")):
        statuses = []
        for _ in range(3):
            async with http.post(gw.url + dodge, json={}) as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    assert (await resp.json())["path"] == meant
        assert statuses == [200, 200, 429], dodge
    # The plain path shares the bucket the encoded one used.
    async with http.post(gw.url + "/api/auth/login", json={}) as resp:
        assert resp.status == 429
    token = bearer(TokenCodec.from_settings(settings).issue(sub="redeemer", role="user"))
    statuses = []
    for path in ("/api/promo-codes/%72edeem", "/api/promo-codes/r%65deem", "/api/promo-codes/redeem"):
        async with http.post(gw.url + path, json={}, headers=token) as resp:
            statuses.append(resp.status)
            if resp.status == 200:
                assert (await resp.json())["path"] == "/api/promo-codes/redeem"
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    "path",
    [
        "/api/users%2Fme",
        "/api/users%2fme",
        "/api/users/%5Cme",
        "/api/users/me%00",
        "/api/users/%2e%2e/me",
        "/api/users/%2E/me",
        "/api/users/./me",
        "/api/users/../auth/login",
        "/api/users/%zzme",
        "/api/users/%4",
    ],
)
async def test_paths_that_decoders_disagree_on_are_refused(
    path: str, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    # yarl would tidy the path: send it byte for byte.
    status, headers, body = await raw_request(
        gw.url, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {codec.issue(sub='u', role='user')}\r\n\r\n"
    )
    assert status == 400, path
    _error_shape(json.loads(body), "INVALID_PATH")
    for name in SECURITY:
        assert name.lower() in headers
    assert upstreams["core"].hits == upstreams["auth"].hits == 0


async def test_the_upstream_receives_the_normalised_path(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = codec.issue(sub="u", role="user")
    request = f"GET /api/users/%61b%3fc%2a%7E HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    status, _, body = await raw_request(gw.url, request)
    assert status == 200
    # Unreserved decoded ("a", "~"), reserved kept encoded with upper-case hex.
    assert json.loads(body)["path"] == "/api/users/ab%3Fc%2A~"


# ------------------------------------------------------------------ 8: compressed request bodies


async def test_a_gzip_body_reaches_the_upstream_decoded_with_its_own_length(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    payload = json.dumps({"displayName": "zipped", "pad": "x" * 5000}).encode()
    headers = {**bearer(codec.issue(sub="u", role="user")), "Content-Type": "application/json"}
    for coding, data in (("gzip", gzip.compress(payload)), ("deflate", zlib.compress(payload))):
        async with http.post(
            gw.url + "/api/users/me", data=data, headers={**headers, "Content-Encoding": coding}
        ) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
        assert echoed["body"].encode() == payload
        assert "Content-Encoding" not in echoed["headers"]
        assert echoed["headers"]["Content-Length"] == str(len(payload))


async def test_a_gzip_bomb_is_refused_with_413_announced_or_chunked(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, max_body_bytes=1_048_576))
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 20_000
    headers = {**bearer(codec.issue(sub="u", role="user")), "Content-Encoding": "gzip"}

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the length is unknown up front
        for i in range(0, len(bomb), 1000):
            yield bomb[i : i + 1000]

    for data in (bomb, chunked()):
        async with http.post(gw.url + "/api/users/me", data=data, headers=headers) as resp:
            assert resp.status == 413
            _error_shape(await resp.json(), "PAYLOAD_TOO_LARGE")
    assert upstreams["core"].hits == 0


async def test_bad_and_unsupported_encodings(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = bearer(codec.issue(sub="u", role="user"))
    cases = [
        ("gzip", b"not gzip at all", 400, "INVALID_CONTENT_ENCODING"),
        ("gzip", gzip.compress(b'{"a": 1}')[:-6], 400, "INVALID_CONTENT_ENCODING"),  # cut short
        ("gzip", gzip.compress(b"{}") + b"trailing", 400, "INVALID_CONTENT_ENCODING"),
        ("br", b"\x0b\x02\x80{}\x03", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("gzip, gzip", gzip.compress(gzip.compress(b"{}")), 415, "UNSUPPORTED_MEDIA_TYPE"),
    ]
    for coding, data, status, code in cases:
        async with http.post(
            gw.url + "/api/users/me", data=data, headers={**token, "Content-Encoding": coding}
        ) as resp:
            assert resp.status == status, coding
            _error_shape(await resp.json(), code)
    assert upstreams["core"].hits == 0


# ------------------------------------------------------------------ 9: request IDs


async def test_a_request_id_that_cannot_be_echoed_is_replaced(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    for value in ("caf\u00e9".encode(), "\u65e5\u672c".encode(), b"\xff\xfe", b"a b", b"x" * 129):
        request = b"GET /api/pricing HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + value + b"\r\n\r\n"
        status, headers, _ = await raw_request(gw.url, request)
        assert status == 200, value
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), value
        seen = {k.lower(): v for k, v in upstreams["core"].seen_headers[-1].items()}
        assert seen["x-request-id"] == headers["x-request-id"], seen
    status, headers, _ = await raw_request(
        gw.url, b"GET /api/pricing HTTP/1.1\r\nHost: x\r\nX-Request-Id: ok-1.2_3\r\n\r\n"
    )
    assert headers["x-request-id"] == "ok-1.2_3"


# ------------------------------------------------------------------ 10: requests that do not parse

SECRET = "Bearer very-secret-token-abc123"
MALFORMED = [
    # bare LF line endings
    f"GET /api/pricing HTTP/1.1\nHost: x\nAuthorization: {SECRET}\n\n".encode(),
    # Content-Length together with Transfer-Encoding (request smuggling)
    f"POST /api/pricing HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\nContent-Length: 4\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
    # a control byte in a header value, and a space in a header name
    f"GET /api/pricing HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\nX-Bad: a\x01b\r\n\r\n".encode(),
    f"GET /api/pricing HTTP/1.1\r\nHost: x\r\nBad Name: {SECRET}\r\n\r\n".encode(),
    # a header line beyond the limit
    f"GET /api/pricing HTTP/1.1\r\nHost: x\r\nAuthorization: {SECRET}\r\nX-Long: {'a' * 20_000}\r\n\r\n".encode(),
]


@pytest.mark.parametrize("request_bytes", MALFORMED, ids=["bare-lf", "cl-te", "ctl-byte", "space-name", "long"])
async def test_unparsable_requests_get_the_error_shape_and_never_an_echo(
    request_bytes: bytes, upstreams: dict[str, Upstream], start_gateway: GatewayFactory
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    raw = await raw_exchange(gw.url, request_bytes)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert 400 <= status < 500, raw[:200]
    assert b"very-secret-token" not in raw
    assert b"aiohttp" not in raw.lower() and b"python" not in raw.lower()
    headers = _headers(head)
    assert headers["content-type"].startswith("application/json")
    assert headers["server"] == "aihub"
    for name in SECURITY:
        assert name.lower() in headers
    parsed = json.loads(body)
    assert parsed["requestId"] == headers["x-request-id"]
    assert re.fullmatch(r"[A-Z_]+", parsed["code"])
    assert upstreams["core"].hits == 0


# ------------------------------------------------------------------ 11: no internal Location


async def test_an_upstream_redirect_never_names_the_internal_address(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = bearer(codec.issue(sub="u", role="user"))
    async with http.get(gw.url + "/api/users/redirect", headers=token, allow_redirects=False) as resp:
        assert resp.status == 307
        assert resp.headers["Location"] == "/moved?x=1"
    # A stripping route (auth serves /api/auth/* without the prefix) gets its prefix back.
    async with http.get(gw.url + "/api/auth/redirect", headers=token, allow_redirects=False) as resp:
        assert resp.status == 307
        assert resp.headers["Location"] == "/api/auth/moved?x=1"


# ------------------------------------------------------------------ 12: Sora buckets


async def test_a_client_cannot_mint_sora_buckets_with_random_session_tokens(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, store: Store, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, rate_limit_guest=3), store=store)
    statuses = []
    for _ in range(6):
        async with http.get(gw.url + "/api/sora/tasks", headers={"X-Session-Token": uuid.uuid4().hex}) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert upstreams["core"].hits == 3
    # The session token still reaches core, which checks it.
    assert "X-Session-Token" in upstreams["core"].seen_headers[-1]


# ------------------------------------------------------------------ 22: readiness


async def test_an_absent_optional_upstream_leaves_readiness_ok(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, dead_port: int
) -> None:
    # The embedded default: aihub's own auth and core answer, nothing runs MCP.
    gw = await start_gateway(gateway_settings(upstreams, mcp_url=f"http://127.0.0.1:{dead_port}"))
    for _ in range(50):
        if gw.gateway.balancer.groups["mcp"].healthy_count() == 0:
            break
        await asyncio.sleep(0.1)
    async with http.get(gw.url + "/health/ready") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"
    assert body["checks"]["upstreams"]["mcp"] == {"healthy": 0, "total": 1}
    assert body["checks"]["optional"] == ["mcp"]
    async with http.get(gw.url + "/api/mcp/x", headers={"Authorization": "Bearer x"}) as resp:
        assert resp.status in (401, 503)  # its routes still answer for themselves


# ------------------------------------------------------------------ raw HTTP


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def raw_exchange(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(_headers(head[:-4]).get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        return head + body
    finally:
        writer.close()


async def raw_request(url: str, data: str | bytes) -> tuple[int, dict[str, str], bytes]:
    raw = await raw_exchange(url, data.encode() if isinstance(data, str) else data)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), _headers(head), body


async def test_a_trailing_slash_is_not_redirected_to_an_internal_address(
    live_core: LiveServer,
    live_auth: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    rt = live_core.runtime
    settings = gateway_settings(upstreams, core_url=live_core.url, auth_url=live_auth.url)
    gw = await start_gateway(settings, store=rt.store)
    caller = await create_user(rt, roles=["user"])
    for method, path in (("GET", "/api/pricing/"), ("GET", "/api/users/me/"), ("POST", "/api/auth/login/")):
        async with http.request(method, gw.url + path, headers=caller.headers, json={}, allow_redirects=False) as resp:
            assert resp.status == 404, (path, resp.status)
            assert "Location" not in resp.headers
            _error_shape(await resp.json(), "NOT_FOUND")


async def test_expect_100_continue_is_answered_by_the_gateway(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    # The runner's direct path hands requests with Expect to the application, which answers it.
    gw = await start_gateway(gateway_settings(upstreams))
    headers = bearer(codec.issue(sub="u", role="user"))
    async with http.post(gw.url + "/api/users/me", data=b'{"a": 1}', headers=headers, expect100=True) as resp:
        assert resp.status == 200
        echoed = await resp.json()
    assert echoed["body"] == '{"a": 1}'
    assert "Expect" not in echoed["headers"]
    assert resp.headers["X-Frame-Options"] == "DENY"  # the response hooks ran on that path too
