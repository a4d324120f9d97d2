"""The concurrency proof, through the real gateway in front of real core, on PostgreSQL +
Redis and on the embedded default (SQLite + the in-process store): 200 simultaneous
authorizations against a limit (a key budget, a quota, a balance) that pays for 50 admit
exactly 50, while settles and cancels of other authorizations of the same user run beside."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from aihub.kit.runtime import Runtime
from aihub.models import ApiKeyCounter, UsageAuthorization
from tests.apikeys.test_authorizations import HELD, WORST
from tests.conftest import LiveServer, _core_app, _live, create_user
from tests.core.credits.helpers import account, assert_reconciled
from tests.core.test_usage import fund
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings

WANTED = 50
CONCURRENT = 200
BESIDE = 20  # authorizations made first, resolved while the 200 race


async def _post(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
    async with http.post(url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


async def _put(http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
    async with http.put(url, headers=headers, json=body) as resp:
        return resp.status, await resp.json()


async def _count_active(rt: Runtime, key_id: str) -> int:
    tx = rt.tx()
    try:
        stmt = select(func.count()).where(
            UsageAuthorization.api_key_id == uuid.UUID(key_id), UsageAuthorization.status == "active"
        )
        return int((await tx.session.execute(stmt)).scalar_one())
    finally:
        await tx.close()


@pytest.fixture
async def live_core(runtime: Runtime) -> AsyncIterator[LiveServer]:
    """Core behind uvicorn on each backend (the ``runtime`` fixture's)."""
    async for live in _live(_core_app(runtime), runtime):
        yield live


@pytest.mark.parametrize("limit", ["key budget", "quota", "balance"])
async def test_200_concurrent_authorizations_against_a_limit_for_50_admit_exactly_50(
    limit: str,
    live_core: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    rt = live_core.runtime
    caller = await create_user(rt)
    # One instance, checked once: a health probe timing out on a loaded machine must not take
    # the only core out of rotation in the middle of the proof.
    settings = gateway_settings(
        upstreams,
        core_url=live_core.url,
        rate_limit_user=0,
        gateway_health_interval_seconds=3600,
        gateway_eject_after_failures=1000,
    )
    gw = await start_gateway(settings, store=rt.store)
    url = gw.url + "/api/usage/authorizations"
    racing_key_body: dict[str, Any] = {"name": "racing"}
    if limit == "key budget":
        await fund(rt, caller.id, 1_000_000)
        # The budget pays for the BESIDE ones made first plus exactly WANTED more.
        racing_key_body["budget"] = {"maxCredits": HELD * (WANTED + BESIDE), "period": "total"}
    elif limit == "quota":
        await fund(rt, caller.id, 1_000_000)
    else:
        # The balance pays for the BESIDE ones (settled at full cost) plus exactly WANTED more.
        await fund(rt, caller.id, HELD * (WANTED + BESIDE))
    status, racing = await _post(http, gw.url + "/api/keys", bearer(caller.token), racing_key_body)
    assert status == 201, racing
    status, other = await _post(http, gw.url + "/api/keys", bearer(caller.token), {"name": "other"})
    assert status == 201, other
    if limit == "quota":
        # The racing key's own quota scope: the cancels on the other key below share the user's
        # account and locks but not this window, so they cannot make room in it.
        admin = await create_user(rt, roles=["admin"])
        quota = {"limits": [{"period": "day", "maxCredits": HELD * (WANTED + BESIDE)}]}
        status, body = await _put(http, gw.url + f"/api/quotas/key:{racing['id']}", bearer(admin.token), quota)
        assert status == 201, body
    racing_headers = {"Authorization": f"Bearer {racing['key']}"}
    other_headers = {"X-API-Key": other["key"]}
    beside = []
    for _ in range(BESIDE):
        status, body = await _post(http, url, racing_headers, WORST)
        assert status == 201, body
        beside.append(body["id"])
    cancellable = []
    if limit != "balance":  # cancels on another key of the same user: same account, same locks
        for _ in range(BESIDE):
            status, body = await _post(http, url, other_headers, WORST)
            assert status == 201, body
            cancellable.append(body["id"])

    async def settle_full(auth_id: str) -> int:
        body = {"requestId": uuid.uuid4().hex, "inputTokens": 1000, "outputTokens": 1000}  # the whole hold
        status, answer = await _post(http, f"{url}/{auth_id}/settle", racing_headers, body)
        assert status == 201, answer
        return status

    async def cancel(auth_id: str) -> int:
        status, answer = await _post(http, f"{url}/{auth_id}/cancel", other_headers, None)
        assert status == 200, answer
        return status

    racers = [_post(http, url, racing_headers, WORST) for _ in range(CONCURRENT)]
    side = [settle_full(a) for a in beside] + [cancel(a) for a in cancellable]
    results = await asyncio.gather(*racers, *side)
    race = results[:CONCURRENT]
    granted = [body for status, body in race if status == 201]
    refused = {(status, body["code"]) for status, body in race if status != 201}
    expected = {
        "key budget": (429, "KEY_BUDGET_EXCEEDED"),
        "quota": (429, "QUOTA_EXCEEDED"),
        "balance": (402, "INSUFFICIENT_CREDITS"),
    }[limit]
    assert len(granted) == WANTED, refused
    assert refused == {expected}
    assert len({body["id"] for body in granted}) == WANTED
    assert await _count_active(rt, racing["id"]) == WANTED
    balance, reserved, ledger = await account(rt, caller.id)
    assert reserved == HELD * WANTED and balance == ledger
    if limit == "key budget":
        tx = rt.tx()
        try:
            used = (
                await tx.session.execute(
                    select(ApiKeyCounter.credits).where(ApiKeyCounter.key_id == uuid.UUID(racing["id"]))
                )
            ).scalar_one()
        finally:
            await tx.close()
        assert used == HELD * (WANTED + BESIDE)
    elif limit == "quota":
        async with http.get(gw.url + "/api/usage/quota", headers=racing_headers) as resp:
            assert resp.status == 200
            items = {i["scope"]: i for i in (await resp.json())["items"]}
        assert items[f"key:{racing['id']}"]["used"]["credits"] == HELD * (WANTED + BESIDE)
        assert items[f"key:{racing['id']}"]["remaining"]["credits"] == 0
    else:
        assert balance == HELD * WANTED  # exactly what the 50 hold
    await assert_reconciled(rt)
