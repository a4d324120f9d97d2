"""The upstream session's lazy read timeout (gateway/upstream.py): the same rule as aiohttp's
``sock_read``, one timer per connection instead of two per request."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.client_proto import ResponseHandler

from aihub.gateway import upstream
from aihub.gateway.routing import Route, RouteTable
from tests.gateway.conftest import OpenGateway, Upstream


async def test_the_session_builds_lazy_timer_connections_on_aiohttps_hooks() -> None:
    # What upstream.py overrides or calls must still exist in aiohttp: a rename there would
    # otherwise silently bring back aiohttp's own timer (or none at all).
    for name in ("_reschedule_timeout", "_drop_timeout", "_on_read_timeout", "start_timeout", "connection_lost"):
        assert callable(getattr(ResponseHandler, name, None)), name
    session = upstream.session(asyncio.get_running_loop())
    try:
        protocol = session.connector._factory()  # type: ignore[union-attr]
        assert isinstance(protocol, upstream._UpstreamProtocol)
        assert protocol._read_timeout_handle is None and protocol._read_timeout is None
    finally:
        await session.close()


async def test_a_stream_longer_than_the_timeout_lives_while_data_keeps_coming(
    open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    # The fake upstream's stream sends 5 events 0.2 s apart: ~1 s in all, never 0.5 s silent.
    gw = await open_gateway(gateway_timeout_seconds=0.5, rate_limit_guest=1000)
    async with http.get(gw.url + "/api/sora/stream") as resp:
        assert resp.status == 200
        assert (await resp.read()).count(b"data: ") == 5


async def test_a_shorter_timeout_on_a_kept_alive_connection_fires_at_its_own_time(
    upstreams: dict[str, Upstream], open_gateway: OpenGateway, http: aiohttp.ClientSession
) -> None:
    # Both routes reach core over the same pooled connection: the long route's request arms
    # that connection's timer far ahead; the short route's 0.3 s must still answer 504 before
    # core's slow endpoint answers (2 s) instead of waiting for the first timer.
    table = RouteTable(
        (
            Route("/api/quick", "core", strip="/api/quick", auth="public", timeout=0.3),
            Route("/api/long", "core", strip="/api/long", auth="public", timeout=3600.0),
        ),
        {"auth": [upstreams["auth"].url], "core": [upstreams["core"].url], "mcp": [upstreams["mcp"].url]},
    )
    gw = await open_gateway(table=table, rate_limit_enabled=False)
    for _ in range(3):
        async with http.get(gw.url + "/api/long/anything") as resp:
            assert resp.status == 200
        async with http.get(gw.url + "/api/quick/slow") as resp:
            assert resp.status == 504
            assert (await resp.json())["code"] == "GATEWAY_TIMEOUT"
