"""The gateway's merged /openapi.json and its offline /docs, through a real gateway.

Core and auth are fake services on loopback that publish a schema of our choosing (and can be
made to fail); the real services behind a real gateway are in tests/docs/test_contract.py.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aihub.config import Settings
from aihub.gateway.docs import DOCS_CSP
from aihub.gateway.headers import GENERATED_CSP
from aihub.gateway.openapi import CACHE_SECONDS, RETRY_SECONDS, client_path
from aihub.gateway.routing import default_table
from tests.conftest import LocalServer, free_port
from tests.gateway.conftest import GatewayFactory, LiveGateway, Upstream, gateway_settings


def _op(op_id: str, ref: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": "ok"}
    if ref:
        response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}
    return {"operationId": op_id, "tags": ["t"], "responses": {"200": response}}


def _schema(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "x", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


AUTH_DOC = _schema(
    {
        "/health": {"get": _op("health_health_get")},
        "/login": {"post": _op("login", "TokenPair")},
        "/me": {"get": _op("read_me", "UserOut")},
    },
    {"UserOut": {"type": "object", "properties": {"a": {"type": "string"}}}, "TokenPair": {"type": "object"}},
)
CORE_DOC = _schema(
    {
        "/health/ready": {"get": _op("ready")},
        "/api/users/me": {"get": _op("read_me", "UserOut")},
        "/not/routed": {"get": _op("hidden")},
    },
    {"UserOut": {"type": "object", "properties": {"b": {"type": "integer"}}}},
)


@dataclass
class FakeService(LocalServer):
    """An aihub service as far as the gateway cares: readiness and a published schema."""

    port: int
    doc: dict[str, Any]
    status: int = 200
    raw: bytes | None = None  # served instead of the document when set
    runner: web.AppRunner | None = None
    hits: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def build_app(self) -> web.Application:
        async def ready(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def openapi(_: web.Request) -> web.Response:
            self.hits += 1
            await self.gate.wait()  # tests hold the answer to pile requests up behind one fetch
            if self.raw is not None:
                return web.Response(body=self.raw, content_type="application/json")
            return web.json_response(self.doc, status=self.status)

        app = web.Application()
        app.router.add_get("/health", ready)
        app.router.add_get("/health/ready", ready)
        app.router.add_get("/openapi.json", openapi)
        return app


@pytest.fixture
async def services() -> Any:
    started = {"auth": FakeService(free_port(), AUTH_DOC), "core": FakeService(free_port(), CORE_DOC)}
    for service in started.values():
        service.gate.set()
        await service.start()
    yield started
    for service in started.values():
        await service.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _gateway(
    start_gateway: GatewayFactory, upstreams: dict[str, Upstream], services: dict[str, FakeService], **extra: Any
) -> tuple[LiveGateway, Clock]:
    settings = gateway_settings(upstreams, auth_url=services["auth"].url, core_url=services["core"].url, **extra)
    gw = await start_gateway(settings)
    clock = Clock()
    gw.gateway.openapi.clock = clock
    return gw, clock


async def _document(http: aiohttp.ClientSession, gw: LiveGateway) -> dict[str, Any]:
    async with http.get(gw.url + "/openapi.json") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/json"
        return dict(await resp.json())


async def test_one_document_with_client_paths_and_the_gateways_own(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await _gateway(start_gateway, upstreams, services)
    async with http.get(gw.url + "/openapi.json") as resp:  # no token: a public route
        assert resp.status == 200
        assert resp.headers["Content-Security-Policy"] == GENERATED_CSP
        assert "X-Request-Id" in resp.headers
        doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert "x-aihub-unavailable" not in doc
    paths = doc["paths"]
    # Auth's paths as a client calls them; core's unchanged; nothing the route table cannot reach.
    assert paths["/api/auth/login"]["post"]["x-aihub-service"] == "auth"
    assert paths["/api/users/me"]["get"]["x-aihub-service"] == "core"
    assert "/login" not in paths and "/api/auth/health" not in paths and "/not/routed" not in paths
    # /health and /health/ready are the gateway's own, not an upstream's.
    assert paths["/health"]["get"]["operationId"] == "gateway_health"
    assert paths["/health/ready"]["get"]["operationId"] == "gateway_ready"
    assert {"get", "post"} <= set(paths["/api/gateway/blocked-ips"])
    assert "delete" in paths["/api/gateway/blocked-ips/{ip}"]
    # Two different UserOut schemas: the second service's is renamed and its refs follow.
    schemas = doc["components"]["schemas"]
    assert schemas["UserOut"] == AUTH_DOC["components"]["schemas"]["UserOut"]
    assert schemas["core_UserOut"] == CORE_DOC["components"]["schemas"]["UserOut"]
    core_ref = paths["/api/users/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert core_ref == "#/components/schemas/core_UserOut"
    auth_ref = paths["/api/auth/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert auth_ref == "#/components/schemas/UserOut"
    # Both services call an operation read_me: operation ids stay unique.
    ids = [op["operationId"] for item in paths.values() for op in item.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids))
    assert {"read_me", "core_read_me"} <= set(ids)


async def test_a_burst_makes_one_fetch_per_service_and_the_copy_is_refreshed_after_the_cache_time(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, clock = await _gateway(start_gateway, upstreams, services)
    for service in services.values():
        service.gate.clear()  # the fetches wait until every request of the burst is in
    burst = [asyncio.ensure_future(_document(http, gw)) for _ in range(20)]
    while not all(service.hits for service in services.values()):
        await asyncio.sleep(0.01)
    for service in services.values():
        service.gate.set()
    documents = await asyncio.gather(*burst)
    assert all(doc == documents[0] for doc in documents)
    assert [s.hits for s in services.values()] == [1, 1]
    await _document(http, gw)
    assert [s.hits for s in services.values()] == [1, 1]  # cached
    clock.now += CACHE_SECONDS
    services["core"].doc = _schema({"/api/credits/balance": {"get": _op("balance")}}, {})
    doc = await _document(http, gw)
    assert [s.hits for s in services.values()] == [2, 2]
    assert "/api/credits/balance" in doc["paths"] and "/api/users/me" not in doc["paths"]


async def test_a_service_that_cannot_be_fetched_gives_a_partial_document_then_recovers(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    services["auth"].status = 500
    gw, clock = await _gateway(start_gateway, upstreams, services)
    doc = await _document(http, gw)
    assert doc["x-aihub-unavailable"] == [{"service": "auth", "reason": "HTTP 500"}]
    assert "INCOMPLETE" in doc["info"]["description"] and "auth" in doc["info"]["description"]
    assert "/api/users/me" in doc["paths"] and "/health" in doc["paths"]
    assert not any(path.startswith("/api/auth/") for path in doc["paths"])
    # A failed service is asked again only after the retry pause, whatever the traffic.
    services["auth"].status = 200
    hits = services["auth"].hits
    assert "x-aihub-unavailable" in await _document(http, gw)
    assert services["auth"].hits == hits
    clock.now += RETRY_SECONDS
    doc = await _document(http, gw)
    assert "x-aihub-unavailable" not in doc
    assert "/api/auth/login" in doc["paths"]


async def test_a_failed_refresh_keeps_serving_the_copy_held(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, clock = await _gateway(start_gateway, upstreams, services)
    first = await _document(http, gw)
    await services["auth"].stop()  # connection refused from now on
    clock.now += CACHE_SECONDS
    assert await _document(http, gw) == first


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b'{"openapi": "3.1.0"}', "not an OpenAPI document"),
        (b'{"paths": {"/x": []}}', "not an OpenAPI document"),
        (b'{"paths": {}, "components": {"schemas": []}}', "not an OpenAPI document"),
        (b'{"paths": {}, "tags": ["no-name"]}', "not an OpenAPI document"),
        (b"[]", "not an OpenAPI document"),
    ],
)
async def test_a_garbled_schema_is_left_out_with_its_reason(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    raw: bytes,
    reason: str,
) -> None:
    services["core"].raw = raw
    gw, _ = await _gateway(start_gateway, upstreams, services)
    doc = await _document(http, gw)
    assert doc["x-aihub-unavailable"] == [{"service": "core", "reason": reason}]
    assert "/api/auth/login" in doc["paths"]


async def test_with_every_service_down_the_gateways_own_operations_remain(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, dead_port: int
) -> None:
    dead = f"http://127.0.0.1:{dead_port}"
    gw = await start_gateway(gateway_settings(upstreams, auth_url=dead, core_url=dead))
    doc = await _document(http, gw)
    assert {entry["service"] for entry in doc["x-aihub-unavailable"]} == {"auth", "core"}
    assert "/api/gateway/blocked-ips" in doc["paths"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.links: list[str] = []
        self.inline: list[str] = []
        self.styled: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "style" in values or any(name.startswith("on") for name in values):
            self.styled.append(tag)
        if tag == "script":
            self.scripts.append(values.get("src"))
            self._in_script = True
        elif tag == "link" and values.get("href"):
            self.links.append(str(values["href"]))
        elif tag == "style":
            self.inline.append("style element")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


async def test_docs_are_served_by_the_gateway_itself_under_a_self_only_csp(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await _gateway(start_gateway, upstreams, services)
    async with http.get(gw.url + "/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"] == DOCS_CSP
        page = _Page()
        page.feed(await resp.text())
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in DOCS_CSP
    assert "unsafe" not in DOCS_CSP and "http" not in DOCS_CSP
    # Nothing inline (the CSP would block it) and nothing from another origin.
    assert page.inline == [] and page.styled == []
    assets = [src for src in page.scripts if src] + page.links
    assert len(page.scripts) == 2 and all(page.scripts)
    assert assets and all(url.startswith("/docs/") for url in assets)
    types = {}
    for url in assets:
        async with http.get(gw.url + url, headers={"Accept-Encoding": "identity"}) as resp:
            assert resp.status == 200, url
            assert resp.headers["Content-Security-Policy"] == DOCS_CSP
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            types[url] = resp.content_type
            body = await resp.read()
        if url.endswith("swagger-ui-bundle.js"):
            assert b"SwaggerUIBundle" in body  # the real Swagger UI, vendored
            async with http.get(gw.url + url, headers={"Accept-Encoding": "gzip"}) as resp:
                assert resp.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await resp.read()) == body
        if url.endswith("init.js"):
            assert b'"/openapi.json"' in body and b"validatorUrl: null" in body
    assert types["/docs/swagger-ui.css"] == "text/css"
    assert types["/docs/init.js"] == "text/javascript"
    async with http.get(gw.url + "/docs/missing.js") as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "NOT_FOUND"
    async with http.post(gw.url + "/docs") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"
    async with http.delete(gw.url + "/openapi.json") as resp:
        assert resp.status == 405


async def test_blocked_addresses_get_no_docs_either(
    upstreams: dict[str, Upstream],
    services: dict[str, FakeService],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw, _ = await _gateway(start_gateway, upstreams, services, gateway_deny_cidrs="127.0.0.0/8")
    for path in ("/openapi.json", "/docs"):
        async with http.get(gw.url + path) as resp:
            assert resp.status == 403
            assert (await resp.json())["code"] == "FORBIDDEN"
    assert services["core"].hits == 0


def test_client_paths_follow_the_route_table() -> None:
    table = default_table(Settings(env="test"))
    assert client_path(table, "auth", "/login") == "/api/auth/login"
    assert client_path(table, "auth", "/.well-known/jwks.json") == "/api/auth/.well-known/jwks.json"
    assert client_path(table, "core", "/api/promo-codes/redeem") == "/api/promo-codes/redeem"
    assert client_path(table, "core", "/api/sora/session") == "/api/sora/session"
    # The service's own health, and paths no route sends to that service, are not the client's.
    assert client_path(table, "auth", "/health") is None
    assert client_path(table, "core", "/internal") is None
    assert client_path(table, "core", "/api/auth/login") is None  # routed, but to auth
