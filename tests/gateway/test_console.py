"""The gateway's console route: served before the route table, public, off with a setting."""

from __future__ import annotations

import aiohttp

from tests.gateway.conftest import GatewayFactory, Upstream, gateway_settings


async def test_console_is_the_gateways_own_and_can_be_turned_off(
    upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    on = await start_gateway(gateway_settings(upstreams))
    async with http.get(f"{on.url}/console/", headers={"X-User-Id": "spoofed"}) as page:
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    async with http.head(f"{on.url}/console/js/app.js") as head:
        assert head.status == 200
    assert sum(u.hits for u in upstreams.values()) == 0  # nothing was proxied
    off = await start_gateway(gateway_settings(upstreams, console_enabled=False))
    for path in ("/console/", "/console/js/app.js", "/"):
        async with http.get(f"{off.url}{path}", allow_redirects=False) as gone:
            assert gone.status == 404, path
            body = await gone.json()
            assert body["code"] == "NOT_FOUND"
            assert gone.headers["Content-Security-Policy"].startswith("default-src 'none'")
