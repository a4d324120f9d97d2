"""How the gateway treats a core instance that is shutting down or not ready.

A response marked ``X-Aihub-Draining`` takes the instance out of rotation at once (and the
mark never reaches the client); a 503 from ``/health/ready`` does so at the first check and a
200 brings it back; when every instance answers "not ready" the gateway still sends to them
rather than answer 503 itself; and any request is retried on the other instance after a
refused connection, because the refused one never saw it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from aihub.kit.jwt import TokenCodec
from tests.conftest import LocalServer, free_port
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings


@dataclass
class Core(LocalServer):
    """A stand-in core instance whose readiness and draining mark the test controls."""

    name: str
    port: int
    ready: int = 200
    draining: bool = False
    hits: int = 0
    checks: int = 0
    runner: web.AppRunner | None = None

    async def _ready(self, _: web.Request) -> web.Response:
        self.checks += 1
        return web.json_response({"status": "ok" if self.ready == 200 else "down"}, status=self.ready)

    async def _any(self, request: web.Request) -> web.Response:
        self.hits += 1
        headers = {"X-Aihub-Draining": "true", "Connection": "close"} if self.draining else {}
        return web.json_response({"upstream": self.name, "method": request.method}, headers=headers)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health/ready", self._ready)
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app


async def _pair() -> tuple[Core, Core]:
    a, b = Core("core-a", free_port()), Core("core-b", free_port())
    await a.start()
    await b.start()
    return a, b


async def _until(condition: object, what: str) -> None:
    for _ in range(100):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_draining_answer_takes_the_instance_out_at_once(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    a, b = await _pair()
    try:
        # Health checks far apart: only the draining mark can explain the switch.
        settings = gateway_settings(upstreams, core_url=f"{a.url},{b.url}", gateway_health_interval_seconds=60)
        gw = await start_gateway(settings)
        headers = bearer(codec.issue(sub="u", role="admin"))
        a.draining = True
        served = []
        for _ in range(10):
            async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
                assert resp.status == 200
                assert "X-Aihub-Draining" not in resp.headers
                served.append((await resp.json())["upstream"])
        assert served.count("core-a") == 1  # its first answer said draining; nothing after
        assert a.hits == 1
    finally:
        await a.stop()
        await b.stop()


async def test_readiness_503_takes_it_out_and_200_brings_it_back(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    a, b = await _pair()
    try:
        gw = await start_gateway(gateway_settings(upstreams, core_url=f"{a.url},{b.url}"))
        group = gw.gateway.balancer.groups["core"]
        a.ready = 503
        await _until(lambda: group.healthy_count() == 1, "core-a out after its readiness 503")
        headers = bearer(codec.issue(sub="u", role="admin"))
        for _ in range(6):
            async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
                assert (await resp.json())["upstream"] == "core-b"
        a.ready = 200
        await _until(lambda: group.healthy_count() == 2, "core-a back after a passing check")
    finally:
        await a.stop()
        await b.stop()


async def test_when_no_instance_is_ready_the_ones_that_answer_still_get_requests(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    a, b = await _pair()
    try:
        gw = await start_gateway(gateway_settings(upstreams, core_url=f"{a.url},{b.url}"))
        group = gw.gateway.balancer.groups["core"]
        a.ready = b.ready = 503  # e.g. Redis down for every core: each answers for itself
        await _until(lambda: group.healthy_count() == 0, "both out of rotation")
        async with http.get(gw.url + "/api/users/me", headers=bearer(codec.issue(sub="u", role="admin"))) as resp:
            assert resp.status == 200
            assert (await resp.json())["upstream"] in {"core-a", "core-b"}
    finally:
        await a.stop()
        await b.stop()


async def test_a_post_is_retried_on_the_other_instance_after_a_refused_connection(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    a, b = await _pair()
    try:
        settings = gateway_settings(
            upstreams, core_url=f"{a.url},{b.url}", gateway_health_interval_seconds=60, gateway_eject_after_failures=100
        )
        gw = await start_gateway(settings)
        await _until(lambda: a.checks > 0, "a first health check")
        await asyncio.sleep(0.1)  # let the check's connection settle before the server goes
        await a.stop()  # gone, and the gateway has not noticed: every pick of it is refused
        headers = bearer(codec.issue(sub="u", role="admin"))
        for _ in range(6):  # no Idempotency-Key: only the refused connection makes the retry safe
            async with http.post(gw.url + "/api/credits/check", json={"amount": 1}, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"upstream": "core-b", "method": "POST"}
        assert b.hits == 6
    finally:
        await a.stop()
        await b.stop()
