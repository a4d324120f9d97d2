"""WebSocket passthrough and load balancing over real upstream instances."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from aihub.gateway.app import GATEWAY, create_app
from aihub.gateway.server import GatewayRunner
from aihub.kit.jwt import TokenCodec
from aihub.kit.store import MemoryStore
from tests.conftest import free_port
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings


async def test_websocket_echo_text_and_binary_with_identity(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = codec.issue(sub="ws-user", role="user")
    async with http.ws_connect(gw.url + "/api/ws/echo", headers=bearer(token)) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello:ws-user"
        await ws.send_bytes(b"\x00\x01\xff")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.BINARY and message.data == b"echo:\x00\x01\xff"


async def test_websocket_token_in_query_for_browsers(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    token = codec.issue(sub="browser", role="user")
    async with http.ws_connect(f"{gw.url}/api/mcp/ws?access_token={token}") as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi:browser"


async def test_websocket_close_code_passes_through(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    async with http.ws_connect(gw.url + "/api/ws/echo", headers=bearer(codec.issue(sub="u", role="user"))) as ws:
        await ws.send_str("close:4001")
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_websocket_refused_without_a_token(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(gateway_settings(upstreams))
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        async with http.ws_connect(gw.url + "/api/ws/echo"):
            pass
    assert caught.value.status == 401


async def test_websocket_message_over_the_limit_closes_1009(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, gateway_ws_max_message_bytes=2048))
    async with http.ws_connect(gw.url + "/api/ws/echo", headers=bearer(codec.issue(sub="u", role="user"))) as ws:
        await ws.send_bytes(b"x" * 5000)
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1009


async def test_websocket_idle_timeout_closes(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await start_gateway(gateway_settings(upstreams, gateway_ws_idle_seconds=0.5))
    async with http.ws_connect(gw.url + "/api/ws/echo", headers=bearer(codec.issue(sub="u", role="user"))) as ws:
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001


@contextlib.asynccontextmanager
async def _silent_instance() -> AsyncIterator[str]:
    """An instance that accepts connections and never answers (hung, or a full backlog)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("failure", ["refused", "silent"])
async def test_websocket_upgrade_retried_on_another_instance(
    failure: str,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if failure == "refused":
            broken = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        else:
            broken = await stack.enter_async_context(_silent_instance())
        settings = gateway_settings(
            upstreams,
            mcp_url=f"{broken},{upstreams['mcp'].url}",
            # Keep the broken instance in rotation: one health check only, no ejection.
            gateway_health_interval_seconds=60,
            gateway_eject_after_failures=100,
            gateway_connect_timeout_seconds=0.5,
        )
        gw = await start_gateway(settings)
        headers = bearer(codec.issue(sub="ws-retry", role="user"))
        for i in range(4):  # round robin: the broken instance is picked first at least once
            async with http.ws_connect(gw.url + "/api/ws/echo", headers=headers) as ws:
                await ws.send_str(f"m{i}")
                assert (await ws.receive(timeout=5)).data == f"echo:m{i}:ws-retry"
        group = gw.gateway.balancer.groups["mcp"]
        assert group.instances[0].url == broken and group.instances[0].failures >= 1


# ---------------------------------------------------------------- load balancing


async def _served_by(http: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int) -> list[str]:
    served = []
    for _ in range(n):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            served.append((await resp.json())["upstream"])
    return served


async def test_two_instances_share_traffic_and_survive_one_dying(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    a, b = Upstream("core-a", free_port()), Upstream("core-b", free_port())
    await a.start()
    await b.start()
    try:
        settings = gateway_settings(upstreams, core_url=f"{a.url},{b.url}", gateway_eject_seconds=30)
        gw = await start_gateway(settings)
        headers = bearer(codec.issue(sub="lb", role="admin"))
        url = gw.url + "/api/users/me"
        served = await _served_by(http, url, headers, 20)
        assert served.count("core-a") == 10 and served.count("core-b") == 10

        await b.stop()
        # Every idempotent request succeeds: a refused connection is retried on the other one.
        assert set(await _served_by(http, url, headers, 20)) == {"core-a"}

        await b.start()
        for _ in range(50):  # the active health check brings it back
            if gw.gateway.balancer.groups["core"].healthy_count() == 2:
                break
            await asyncio.sleep(0.1)
        assert set(await _served_by(http, url, headers, 20)) == {"core-a", "core-b"}
    finally:
        await a.stop()
        await b.stop()


async def test_no_healthy_instance_is_503(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
    dead_port: int,
) -> None:
    # Nothing listens on the core port: the health checks fail and the instance leaves rotation.
    gw = await start_gateway(gateway_settings(upstreams, core_url=f"http://127.0.0.1:{dead_port}"))
    for _ in range(50):
        if gw.gateway.balancer.groups["core"].healthy_count() == 0:
            break
        await asyncio.sleep(0.1)
    async with http.get(gw.url + "/api/users/me", headers=bearer(codec.issue(sub="u", role="admin"))) as resp:
        assert resp.status == 503
        assert (await resp.json())["code"] == "SERVICE_UNAVAILABLE"
    async with http.get(gw.url + "/health/ready") as resp:
        body = await resp.json()
    assert body["status"] == "degraded"
    assert body["checks"]["upstreams"]["core"] == {"healthy": 0, "total": 1}


async def test_every_way_a_request_ends_counts_it_off_its_instance(
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    """Least-outstanding balancing reads each instance's count of requests in flight: a relayed
    answer, a stream, an upload cut at the limit, a refused connection and a WebSocket session
    each take the instance's lease and give it back."""
    gw = await start_gateway(gateway_settings(upstreams, max_body_bytes=256 * 1024))
    core = gw.gateway.balancer.groups["core"].instances[0]
    mcp = gw.gateway.balancer.groups["mcp"].instances[0]
    headers = bearer(codec.issue(sub="lease", role="user"))
    async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
        assert resp.status == 200
    async with http.get(gw.url + "/api/users/stream", headers=headers) as resp:
        assert (await resp.read()).count(b"data:") == 5
    async with http.post(gw.url + "/api/users/upload", data=_chunks(4 * 1024 * 1024), headers=headers) as resp:
        assert resp.status == 413
    async with http.ws_connect(gw.url + "/api/ws/echo", headers=headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi:lease"
        assert mcp.outstanding == 1  # the session is in flight for as long as it lasts
    await upstreams["mcp"].stop()  # refused now; the health check has not noticed yet
    async with http.get(gw.url + "/api/mcp/anything", headers=headers) as resp:
        assert resp.status in (502, 503)
    await asyncio.sleep(0.1)  # the client may see its close before the gateway's handler ends
    assert (core.outstanding, mcp.outstanding) == (0, 0)


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 65_536):
        yield b"x" * 65_536
        await asyncio.sleep(0)


async def test_a_request_cancelled_by_shutdown_is_counted_off_too(
    upstreams: dict[str, Upstream], http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    """A handler still waiting on its upstream when the shutdown timeout ends is cancelled: the
    lease is given back all the same (it was not, before the lease: the count stayed up)."""
    app = create_app(gateway_settings(upstreams), store=MemoryStore())
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=0.5)  # shorter than /slow's 2 s
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    core = app[GATEWAY].balancer.groups["core"].instances[0]
    slow = asyncio.ensure_future(
        http.get(f"http://127.0.0.1:{port}/api/users/slow", headers=bearer(codec.issue(sub="u", role="user")))
    )
    try:
        for _ in range(100):
            if core.outstanding == 1:
                break
            await asyncio.sleep(0.02)
        assert core.outstanding == 1
        await runner.cleanup()
        assert core.outstanding == 0
    finally:
        with contextlib.suppress(aiohttp.ClientError):
            (await slow).release()
