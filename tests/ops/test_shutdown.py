"""SIGTERM on each service, as a real process on PostgreSQL and Redis: readiness turns 503
first while requests are still served, then the listener closes, an in-flight request still
completes, the gateway's WebSockets get 1001 on both sides, and the process exits 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from aihub.config import Settings
from aihub.kit.jwt import TokenCodec
from aihub.kit.runtime import Runtime
from tests.conftest import create_user, free_port
from tests.core.credits.helpers import account, money
from tests.ops.procs import Proc, aihub_env, start, wait_ready, wait_refused, wait_status

pytestmark = pytest.mark.e2e
DRAIN = "2"  # long enough to see the 503 before the listener closes, even on a busy machine


class SlowBody:
    """A JSON body sent in two chunks; the second waits for ``release``, so the request is
    in flight on the server (headers parsed, body incomplete) for as long as the test wants."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail
        self.sent = asyncio.Event()
        self.release = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.sent.set()  # httpx asks for the next chunk only once the first one is written
        await self.release.wait()
        yield self.tail


async def _drain_and_finish(proc: Proc, body: SlowBody, request: asyncio.Task[httpx.Response]) -> httpx.Response:
    """SIGTERM with a request in flight: 503 while still serving, then refused, then it completes."""
    url = proc.url
    await body.sent.wait()
    proc.terminate()
    ready = await wait_status(url + "/health/ready", 503)
    assert ready.json()["draining"] is True
    async with httpx.AsyncClient() as client:
        live = await client.get(url + "/health")  # still served while draining, marked as such
    assert live.status_code == 200
    assert live.headers["connection"] == "close"
    assert live.headers["x-aihub-draining"] == "true"
    await wait_refused(url + "/health")
    assert not request.done()
    body.release.set()
    return await request


async def test_core_sigterm_finishes_the_in_flight_write_and_exits_0(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    rt = Runtime.build(Settings(env="test", database_url=pg_url, redis_url=redis_url))
    port = free_port()
    env = aihub_env(
        AIHUB_DATABASE_URL=pg_url,
        AIHUB_REDIS_URL=redis_url,
        AIHUB_CORE_PORT=str(port),
        AIHUB_AUTO_MIGRATE="false",
        AIHUB_SHUTDOWN_DRAIN_SECONDS=DRAIN,
    )
    core = start("core", ["serve", "core"], env, tmp_path, port)
    try:
        user = await create_user(rt)
        await wait_ready(core)
        body = SlowBody(f'{{"userId": "{user.id}", '.encode(), b'"amount": 7, "reason": "purchase"}')
        headers = {**money(rt, key="slow-grant"), "Content-Type": "application/json"}
        async with httpx.AsyncClient(timeout=60) as client:
            request = asyncio.create_task(client.post(core.url + "/api/credits/grant", content=body, headers=headers))
            response = await _drain_and_finish(core, body, request)
        assert response.status_code == 201, response.text
        assert response.json()["balanceAfter"] == 7
        assert await core.exited() == 0, core.output()[-3000:]
        assert await account(rt, user.id) == (7, 0, 7)
        log = core.output()
        assert "shutdown.draining" in log and "shutdown.stopping" in log
    finally:
        core.kill()
        await rt.close()


async def test_auth_sigterm_finishes_the_in_flight_login_and_exits_0(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    rt = Runtime.build(Settings(env="test", database_url=pg_url, redis_url=redis_url))
    port = free_port()
    env = aihub_env(
        AIHUB_DATABASE_URL=pg_url,
        AIHUB_REDIS_URL=redis_url,
        AIHUB_AUTH_PORT=str(port),
        AIHUB_AUTO_MIGRATE="false",
        AIHUB_SHUTDOWN_DRAIN_SECONDS=DRAIN,
    )
    auth = start("auth", ["serve", "auth"], env, tmp_path, port)
    try:
        user = await create_user(rt, password="slow-but-correct-1")
        await wait_ready(auth)
        body = SlowBody(f'{{"email": "{user.email}", '.encode(), b'"password": "slow-but-correct-1"}')
        async with httpx.AsyncClient(timeout=60) as client:
            request = asyncio.create_task(
                client.post(auth.url + "/login", content=body, headers={"Content-Type": "application/json"})
            )
            response = await _drain_and_finish(auth, body, request)
        assert response.status_code == 200, response.text
        assert rt.codec.verify(response.json()["accessToken"]).sub == user.id
        assert await auth.exited() == 0, auth.output()[-3000:]
    finally:
        auth.kill()
        await rt.close()


class Upstream:
    """A stand-in for the MCP upstream: one request that waits, one WebSocket that echoes."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.ws_closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def ok(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def wait(self, _: web.Request) -> web.Response:
        self.entered.set()
        await self.release.wait()
        return web.json_response({"waited": True})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + message.data)
        if not self.ws_closed.done():
            self.ws_closed.set_result(ws.close_code)
        return ws

    async def serve(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_get("/health", self.ok)
        app.router.add_get("/health/ready", self.ok)
        app.router.add_get("/api/mcp/wait", self.wait)
        app.router.add_get("/api/ws/echo", self.ws)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}"


async def test_gateway_sigterm_closes_websockets_1001_and_finishes_the_proxied_request(
    redis_url: str, tmp_path: Path
) -> None:
    upstream = Upstream()
    runner, upstream_url = await upstream.serve()
    port = free_port()
    env = aihub_env(
        AIHUB_REDIS_URL=redis_url,
        AIHUB_GATEWAY_PORT=str(port),
        AIHUB_AUTH_URL=upstream_url,
        AIHUB_CORE_URL=upstream_url,
        AIHUB_MCP_URL=upstream_url,
        AIHUB_GATEWAY_HEALTH_INTERVAL_SECONDS="0.2",
        AIHUB_SHUTDOWN_DRAIN_SECONDS=DRAIN,
    )
    gateway = start("gateway", ["serve", "gateway"], env, tmp_path, port)
    token = TokenCodec.from_settings(Settings(env="test")).issue(sub="ws-user", role="user")
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        await wait_ready(gateway)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(gateway.url + "/api/ws/echo", headers=bearer)
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "echo:hello"
            request = asyncio.create_task(http.get(gateway.url + "/api/mcp/wait", headers=bearer))
            await upstream.entered.wait()

            gateway.terminate()
            ready = await wait_status(gateway.url + "/health/ready", 503)
            assert ready.json()["status"] == "down"
            await wait_refused(gateway.url + "/health")
            closing = await ws.receive(timeout=30)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1001
            assert await asyncio.wait_for(upstream.ws_closed, timeout=30) == 1001

            upstream.release.set()
            async with await request as response:
                assert response.status == 200
                assert await response.json() == {"waited": True}
        assert await gateway.exited() == 0, gateway.output()[-3000:]
    finally:
        gateway.kill()
        await runner.cleanup()
