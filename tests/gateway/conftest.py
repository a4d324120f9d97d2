"""Gateway fixtures: real upstream servers and real gateways on loopback, in the test's loop."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aihub.config import Settings
from aihub.gateway.app import GATEWAY, Gateway, create_app
from aihub.gateway.routing import RouteTable
from aihub.gateway.server import GatewayRunner
from aihub.kit.jwt import TokenCodec
from aihub.kit.store import MemoryStore, RedisStore, Store
from tests.conftest import LocalServer, free_port


@dataclass
class Upstream(LocalServer):
    name: str
    port: int
    runner: web.AppRunner | None = None
    hits: int = 0
    uploaded: list[int] = field(default_factory=list)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    # The fake core's live permissions: subjects demoted (403) or gone (401) since their token.
    demoted: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)
    permission_checks: int = 0
    # Set by a test that must see the stream's first chunk arrive while the rest is held back.
    stream_gate: asyncio.Event | None = None

    def build_app(self) -> web.Application:
        return _upstream_app(self)


UPSTREAM = web.AppKey("upstream", Upstream)


async def _echo(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    upstream.hits += 1
    upstream.seen_headers.append(dict(request.headers))
    body = await request.read()
    return web.json_response(
        {
            "upstream": upstream.name,
            "method": request.method,
            "path": request.raw_path.partition("?")[0],
            "query": request.raw_path.partition("?")[2],
            "body": body.decode(errors="replace"),
            "headers": {k: v for k, v in request.headers.items()},
        }
    )


async def _stream(request: web.Request) -> web.StreamResponse:
    """Five events; with a ``stream_gate``, the last four wait until the test opens it."""
    gate = request.app[UPSTREAM].stream_gate
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(5):
        await response.write(f"data: {i}\n\n".encode())
        if i == 0 and gate is not None:
            await gate.wait()
    await response.write_eof()
    return response


async def _cookies(_: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    return response


async def _upload(request: web.Request) -> web.Response:
    received = 0
    try:
        async for chunk in request.content.iter_chunked(65_536):
            received += len(chunk)
    finally:
        request.app[UPSTREAM].uploaded.append(received)
    return web.json_response({"received": received})


async def _status(request: web.Request) -> web.Response:
    return web.json_response({"status": int(request.match_info["code"])}, status=int(request.match_info["code"]))


async def _slow(_: web.Request) -> web.Response:
    await asyncio.sleep(2)
    return web.json_response({"slow": True})


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            if message.data.startswith("close:"):
                await ws.close(code=int(message.data.split(":")[1]))
                break
            await ws.send_str("echo:" + message.data + ":" + request.headers.get("X-User-Id", "-"))
        elif message.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(b"echo:" + message.data)
    return ws


async def _permission_check(request: web.Request) -> web.Response:
    """Core's ``POST /api/permissions/check`` for the caller itself: the token's claims unless
    the test changed the subject's standing since the token was issued."""
    upstream = request.app[UPSTREAM]
    upstream.permission_checks += 1
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return web.json_response({"code": "UNAUTHORIZED"}, status=401)
    if claims["sub"] in upstream.gone:
        return web.json_response({"code": "UNAUTHORIZED"}, status=401)
    permission = (await request.json())["permission"]
    held = claims.get("role") == "admin" or "admin" in claims.get("roles", []) or permission in claims.get("scopes", [])
    return web.json_response({"allowed": held and claims["sub"] not in upstream.demoted})


async def _redirect(request: web.Request) -> web.Response:
    # As Starlette's slash redirect does: an absolute URL built from the Host it was sent.
    return web.Response(status=307, headers={"Location": f"http://{request.host}/moved?x=1"})


async def _health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _upstream_app(upstream: Upstream) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream
    app.router.add_get("/health", _health)
    app.router.add_get("/health/ready", _health)  # what the gateway probes on auth and core
    for prefix in ("", "/api/mcp", "/api/users", "/api/sora"):
        app.router.add_get(prefix + "/stream", _stream)
        app.router.add_get(prefix + "/cookies", _cookies)
        app.router.add_post(prefix + "/upload", _upload)
        app.router.add_get(prefix + "/status/{code}", _status)
        app.router.add_get(prefix + "/slow", _slow)
        app.router.add_get(prefix + "/redirect", _redirect)
    app.router.add_post("/api/permissions/check", _permission_check)
    app.router.add_get("/api/ws/echo", _ws)
    app.router.add_get("/api/mcp/ws", _ws)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    started = {name: Upstream(name, free_port()) for name in ("auth", "core", "mcp")}
    for upstream in started.values():
        await upstream.start()
    yield started
    for upstream in started.values():
        await upstream.stop()


@dataclass
class LiveGateway:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    async def stop(self) -> None:
        await self.runner.cleanup()


GatewayFactory = Callable[..., Awaitable[LiveGateway]]


def gateway_settings(upstreams: dict[str, Upstream], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "auth_url": upstreams["auth"].url,
        "core_url": upstreams["core"].url,
        "mcp_url": upstreams["mcp"].url,
        "gateway_health_interval_seconds": 0.2,
        "gateway_eject_seconds": 0.5,
        "gateway_access_log": False,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def start_gateway() -> AsyncIterator[GatewayFactory]:
    live: list[LiveGateway] = []

    async def start(
        settings: Settings,
        store: Store | None = None,
        port: int | None = None,
        codec: TokenCodec | None = None,
        table: RouteTable | None = None,
    ) -> LiveGateway:
        app = create_app(settings, store=store or MemoryStore(), codec=codec, table=table)
        runner = GatewayRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        port = port or free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gw = LiveGateway(f"http://127.0.0.1:{port}", app, runner)
        live.append(gw)
        return gw

    yield start
    for gw in live:
        await gw.stop()


OpenGateway = Callable[..., Awaitable[LiveGateway]]


@pytest.fixture
def open_gateway(upstreams: dict[str, Upstream], start_gateway: GatewayFactory) -> OpenGateway:
    """A gateway over this test's fake upstreams, settings overridden by keyword:
    ``await open_gateway(rate_limit_user=3, store=store)``."""

    async def open_(
        *,
        store: Store | None = None,
        codec: TokenCodec | None = None,
        table: RouteTable | None = None,
        **overrides: Any,
    ) -> LiveGateway:
        return await start_gateway(gateway_settings(upstreams, **overrides), store=store, codec=codec, table=table)

    return open_


STORES = ["memory", "redis"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(url)
    yield redis_store
    await redis_store.close()


@pytest.fixture
async def redis_store(redis_url: str) -> AsyncIterator[RedisStore]:
    redis_store = RedisStore(redis_url)
    yield redis_store
    await redis_store.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec.from_settings(Settings(env="test"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
