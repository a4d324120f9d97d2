"""API keys through the real gateway in front of the real core: resolution, refusals, the
key's own rate, revocation across gateway processes. On PostgreSQL + Redis and on the
embedded default (SQLite + the in-process store)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from aihub.kit.runtime import Runtime
from aihub.models import ApiKey, UsageAuthorization
from tests.apikeys.test_authorizations import HELD, WORST
from tests.conftest import Caller, LiveServer, _core_app, _live, create_user, free_port
from tests.core.test_usage import fund
from tests.gateway.conftest import GatewayFactory, LiveGateway, Upstream, bearer, gateway_settings
from tests.ops import procs


@pytest.fixture
async def core(runtime: Runtime) -> AsyncIterator[LiveServer]:
    """Core behind uvicorn on whichever backend the ``settings`` fixture picked."""
    async for live in _live(_core_app(runtime), runtime):
        yield live


async def gateway_for(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, **overrides: Any
) -> LiveGateway:
    values: dict[str, Any] = {"core_url": core.url, "rate_limit_user": 0, **overrides}
    return await start_gateway(gateway_settings(upstreams, **values), store=core.runtime.store)


async def new_key(http: aiohttp.ClientSession, gw: LiveGateway, caller: Caller, **body: Any) -> dict[str, Any]:
    async with http.post(gw.url + "/api/keys", headers=bearer(caller.token), json={"name": "gw", **body}) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def status_code(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, str | None]:
    async with http.get(url, headers=headers) as resp:
        body = await resp.json()
        return resp.status, body.get("code")


async def test_a_key_authenticates_at_the_gateway_with_either_header(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    caller = await create_user(core.runtime)
    gw = await gateway_for(core, upstreams, start_gateway)
    created = await new_key(http, gw, caller)
    for headers in ({"Authorization": f"Bearer {created['key']}"}, {"X-API-Key": created["key"]}):
        async with http.get(gw.url + "/api/users/me", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["id"] == caller.id
    # The identity headers reach an upstream with the key's id; a client's own is dropped.
    spoof = {"X-API-Key": created["key"], "X-Api-Key-Id": str(uuid.uuid4()), "X-User-Id": str(uuid.uuid4())}
    async with http.get(gw.url + "/api/mcp/tools", headers=spoof) as resp:
        assert resp.status == 200
    seen = upstreams["mcp"].seen_headers[-1]
    assert seen["X-Api-Key-Id"] == created["id"] and seen["X-User-Id"] == caller.id


async def test_each_refusal_at_the_gateway(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    rt = core.runtime
    caller = await create_user(rt)
    gw = await gateway_for(core, upstreams, start_gateway)
    unknown = "ahk_" + "a" * 8 + "b" * 43
    assert await status_code(http, gw.url + "/api/users/me", {"X-API-Key": unknown}) == (401, "INVALID_API_KEY")
    assert await status_code(http, gw.url + "/api/users/me", {"X-API-Key": "nope"}) == (401, "INVALID_API_KEY")
    fenced = await new_key(http, gw, caller, allowedIps=["10.0.0.0/8"])
    assert await status_code(http, gw.url + "/api/users/me", {"X-API-Key": fenced["key"]}) == (
        403,
        "KEY_IP_NOT_ALLOWED",
    )
    expired = await new_key(http, gw, caller)
    tx = rt.tx()
    try:
        row = await tx.session.get(ApiKey, uuid.UUID(expired["id"]))
        assert row is not None
        row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        await tx.commit()
    finally:
        await tx.close()
    assert await status_code(http, gw.url + "/api/users/me", {"X-API-Key": expired["key"]}) == (401, "KEY_EXPIRED")
    # The key's own requests per minute, in the same round trip as the caller's limit.
    slow = await new_key(http, gw, caller, requestsPerMinute=2)
    codes = [await status_code(http, gw.url + "/api/users/me", {"X-API-Key": slow["key"]}) for _ in range(3)]
    assert codes == [(200, None), (200, None), (429, "RATE_LIMIT_EXCEEDED")]
    async with http.get(gw.url + "/api/users/me", headers={"X-API-Key": slow["key"]}) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    # Another key of the same user has its own bucket.
    other = await new_key(http, gw, caller)
    assert await status_code(http, gw.url + "/api/users/me", {"X-API-Key": other["key"]}) == (200, None)


async def test_revocation_and_suspension_stop_a_cached_key_on_the_next_request(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    rt = core.runtime
    admin = await create_user(rt, roles=["admin"])
    caller = await create_user(rt)
    gw = await gateway_for(core, upstreams, start_gateway, gateway_api_key_cache_seconds=3600)
    created = await new_key(http, gw, caller)
    headers = {"X-API-Key": created["key"]}
    # Routed to the fake MCP upstream: only the gateway (and its cache) decides there.
    assert (await status_code(http, gw.url + "/api/mcp/x", headers))[0] == 200
    uncached = await new_key(http, gw, caller)
    await set_status(http, gw, admin, caller.id, "suspended")
    # What a suspended user's JWT gets from core, from the gateway alone (cached key) and from
    # core's resolution (a key the gateway has not seen).
    suspended = (403, "ACCOUNT_SUSPENDED")
    assert await status_code(http, gw.url + "/api/mcp/x", headers) == suspended
    assert await status_code(http, gw.url + "/api/users/me", headers) == suspended
    assert await status_code(http, gw.url + "/api/mcp/x", {"X-API-Key": uncached["key"]}) == suspended
    await set_status(http, gw, admin, caller.id, "active")
    assert (await status_code(http, gw.url + "/api/mcp/x", headers))[0] == 200
    async with http.delete(gw.url + f"/api/keys/{created['id']}", headers=bearer(caller.token)) as resp:
        assert resp.status == 204
    assert await status_code(http, gw.url + "/api/mcp/x", headers) == (401, "INVALID_API_KEY")
    # A deleted user's keys are as unknown as a revoked one, cached or not.
    assert (await status_code(http, gw.url + "/api/mcp/x", {"X-API-Key": uncached["key"]}))[0] == 200
    async with http.delete(gw.url + f"/api/users/{caller.id}", headers=bearer(admin.token)) as resp:
        assert resp.status == 204
    assert await status_code(http, gw.url + "/api/mcp/x", {"X-API-Key": uncached["key"]}) == (401, "INVALID_API_KEY")


async def set_status(http: aiohttp.ClientSession, gw: LiveGateway, admin: Caller, user_id: str, status: str) -> None:
    async with http.patch(gw.url + f"/api/users/{user_id}", headers=bearer(admin.token), json={"status": status}) as r:
        assert r.status == 200, await r.text()


async def test_core_refuses_a_caller_outside_allowed_ips_itself(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Core checks ``allowedIps`` against the address the gateway saw (X-Forwarded-For from a
    trusted peer: loopback here) or its own peer, whatever the gateway has cached."""
    caller = await create_user(core.runtime)
    # The gateway believes X-Forwarded-For from loopback, so a test client can stand anywhere.
    gw = await gateway_for(
        core, upstreams, start_gateway, gateway_trusted_proxies="127.0.0.1/32", gateway_api_key_cache_seconds=3600
    )
    created = await new_key(http, gw, caller, allowedIps=["10.0.0.0/8"])
    inside, outside = {"X-API-Key": created["key"], "X-Forwarded-For": "10.1.2.3"}, {"X-API-Key": created["key"]}
    refused = (403, "KEY_IP_NOT_ALLOWED")
    # Directly at core: its peer (loopback) is outside; a forwarded 10.1.2.3 from it is inside.
    assert await status_code(http, core.url + "/api/users/me", outside) == refused
    assert await status_code(http, core.url + "/api/users/me", inside) == (200, None)
    assert await status_code(http, core.url + "/api/keys/current", outside) == refused
    # Through the gateway, resolved for the client at 10.1.2.3, then cached.
    assert await status_code(http, gw.url + "/api/users/me", inside) == (200, None)
    assert await status_code(http, gw.url + "/api/users/me", outside) == refused
    # Narrowed while the gateway holds the old record: the gateway alone (the fake MCP
    # upstream) still admits it until its cache runs out, core refuses it at once.
    async with http.patch(
        gw.url + f"/api/keys/{created['id']}", headers=bearer(caller.token), json={"allowedIps": ["10.9.0.0/16"]}
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert await status_code(http, gw.url + "/api/mcp/x", inside) == (200, None)
    assert await status_code(http, gw.url + "/api/users/me", inside) == refused
    moved = {**inside, "X-Forwarded-For": "10.9.8.7"}
    assert await status_code(http, core.url + "/api/users/me", moved) == (200, None)


async def test_revocation_is_seen_by_a_second_gateway_process_on_its_next_request(
    live_core: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_url: str,
    tmp_path: Path,
) -> None:
    rt = live_core.runtime
    admin = await create_user(rt, roles=["admin"])
    caller = await create_user(rt)
    first = await gateway_for(live_core, upstreams, start_gateway, gateway_api_key_cache_seconds=3600)
    port = free_port()
    env = procs.aihub_env(
        AIHUB_REDIS_URL=redis_url,
        AIHUB_CORE_URL=live_core.url,
        AIHUB_MCP_URL=upstreams["mcp"].url,
        AIHUB_AUTH_URL=upstreams["auth"].url,
        AIHUB_GATEWAY_PORT=str(port),
        AIHUB_GATEWAY_API_KEY_CACHE_SECONDS="3600",
        AIHUB_GATEWAY_ACCESS_LOG="false",
        AIHUB_GATEWAY_HEALTH_INTERVAL_SECONDS="0.25",
        AIHUB_RATE_LIMIT_USER="0",
        AIHUB_LOG_LEVEL="warning",
    )
    second = procs.start("gateway", ["serve", "gateway"], env, tmp_path, port)
    try:
        await procs.wait_status(second.url + "/health", 200)
        created = await new_key(http, first, caller)
        headers = {"X-API-Key": created["key"]}
        for gw_url in (first.url, second.url):  # both have the key cached for an hour now
            assert (await status_code(http, gw_url + "/api/mcp/x", headers))[0] == 200
        # Suspending the user is seen by the other process on its next request, and so is
        # lifting it again.
        await set_status(http, first, admin, caller.id, "suspended")
        assert await status_code(http, second.url + "/api/mcp/x", headers) == (403, "ACCOUNT_SUSPENDED")
        await set_status(http, first, admin, caller.id, "active")
        assert (await status_code(http, second.url + "/api/mcp/x", headers))[0] == 200
        async with http.delete(first.url + f"/api/keys/{created['id']}", headers=bearer(caller.token)) as resp:
            assert resp.status == 204
        # The very next request at the other process is refused: the marker is in Redis
        # before the 204 leaves, and it is read in the rate-limit round trip.
        assert await status_code(http, second.url + "/api/mcp/x", headers) == (401, "INVALID_API_KEY")
    finally:
        second.terminate()
        await second.exited()


async def test_authorization_refusals_through_the_gateway(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A model-restricted key is refused another model, an unknown model is refused, a key's
    budget and the balance refuse before anything is held, and a late settle is refused."""
    rt = core.runtime
    admin, caller, broke = await create_user(rt, roles=["admin"]), await create_user(rt), await create_user(rt)
    await fund(rt, caller.id, 1000)
    gw = await gateway_for(core, upstreams, start_gateway)
    url = gw.url + "/api/usage/authorizations"

    async def authorize(headers: dict[str, str], **body: Any) -> tuple[int, Any]:
        async with http.post(url, headers=headers, json={**WORST, **body}) as resp:
            return resp.status, await resp.json()

    mini = {"X-API-Key": (await new_key(http, gw, caller, models=["openai/gpt-4o-mini"]))["key"]}
    refused = await authorize(mini)
    assert (refused[0], refused[1]["code"], refused[1]["details"]["model"]) == (
        403,
        "MODEL_NOT_ALLOWED",
        "openai/gpt-4o",
    )
    assert (await authorize(mini, provider="anthropic"))[1]["code"] == "MODEL_NOT_ALLOWED"
    assert (await authorize(mini, model="gpt-4o-mini"))[0] == 201
    # The key's restriction is checked first: it does not even learn which models exist.
    assert (await authorize(mini, model="no-such-model"))[1]["code"] == "MODEL_NOT_ALLOWED"
    anyone = {"X-API-Key": (await new_key(http, gw, caller, budget={"maxCredits": HELD, "period": "day"}))["key"]}
    unknown = await authorize(anyone, model="no-such-model")
    assert (unknown[0], unknown[1]["code"]) == (422, "UNKNOWN_MODEL")
    status, first = await authorize(anyone)
    assert status == 201, first
    assert (await authorize(anyone))[1]["code"] == "KEY_BUDGET_EXCEEDED"
    broke_key = {"X-API-Key": (await new_key(http, gw, broke))["key"]}
    poor = await authorize(broke_key)
    assert (poor[0], poor[1]["code"]) == (402, "INSUFFICIENT_CREDITS")
    async with http.put(
        gw.url + f"/api/quotas/user:{caller.id}", headers=bearer(admin.token), json={"period": "day", "maxCredits": 1}
    ) as resp:
        assert resp.status == 201
    assert (await authorize({"X-API-Key": (await new_key(http, gw, caller))["key"]}))[1]["code"] == "QUOTA_EXCEEDED"
    tx = rt.tx()
    try:
        stmt = update(UsageAuthorization).where(UsageAuthorization.id == uuid.UUID(first["id"]))
        await tx.session.execute(stmt.values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
        await tx.commit()
    finally:
        await tx.close()
    settle = {"requestId": uuid.uuid4().hex, "inputTokens": 1, "outputTokens": 1}
    async with http.post(f"{url}/{first['id']}/settle", headers=anyone, json=settle) as resp:
        assert (resp.status, (await resp.json())["details"]) == (409, {"status": "expired"})


async def test_the_gateway_admin_api_takes_an_admins_key_in_either_header(
    core: LiveServer, upstreams: dict[str, Upstream], start_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Core is asked for the caller's live gateway:admin with the key itself (it was a 500
    for a key sent as X-API-Key, which left no bearer token to ask with)."""
    rt = core.runtime
    admin, user = await create_user(rt, roles=["admin"]), await create_user(rt)
    gw = await gateway_for(core, upstreams, start_gateway)
    admins = await new_key(http, gw, admin)
    users = await new_key(http, gw, user)
    url = gw.url + "/api/gateway/blocked-ips"
    for headers in ({"X-API-Key": admins["key"]}, {"Authorization": f"Bearer {admins['key']}"}):
        assert (await status_code(http, url, headers))[0] == 200
    assert await status_code(http, url, {"X-API-Key": users["key"]}) == (403, "FORBIDDEN")


async def test_the_access_log_names_the_key_by_its_id_never_the_key(
    core: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caller = await create_user(core.runtime)
    gw = await gateway_for(core, upstreams, start_gateway, gateway_access_log=True)
    created = await new_key(http, gw, caller)
    capfd.readouterr()
    assert (await status_code(http, gw.url + "/api/mcp/x", {"X-API-Key": created["key"]}))[0] == 200
    out = capfd.readouterr().out
    assert created["key"] not in out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    access = [r for r in lines if r.get("event") == "request" and r.get("service") == "gateway"]
    assert [(r["path"], r["api_key_id"], r["user_id"]) for r in access] == [("/api/mcp/x", created["id"], caller.id)]
