"""Per-account low-balance alerts: settings API, one event per downward crossing, email (both engines)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from sqlalchemy import select

from aihub.config import Settings
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from aihub.models import CreditAccount, WebhookDelivery
from tests.conftest import Caller, _core_app, _live, create_user, free_port
from tests.core.credits.helpers import assert_error, grant, money
from tests.smtp_sink import SmtpSink


@dataclass
class Bench:
    runtime: Runtime
    client: httpx.AsyncClient
    admin: Caller
    endpoint_id: str


async def _bench(rt: Runtime, client: httpx.AsyncClient) -> Bench:
    await jobs_of(rt).start()  # consume the queue (no periodic retries: deliveries are only counted)
    admin = await create_user(rt, roles=["admin"])
    created = await client.post(
        "/api/webhooks",
        json={"url": f"http://127.0.0.1:{free_port()}/x", "events": ["credits.low_balance"]},
        headers=admin.headers,
    )
    assert created.status_code == 201
    return Bench(rt, client, admin, created.json()["id"])


@pytest.fixture
async def bench(settings: Settings) -> AsyncIterator[Bench]:
    rt = Runtime.build(settings.model_copy(update={"low_balance_threshold": 20}))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            yield await _bench(rt, client)
    finally:
        await rt.close()


async def _events(rt: Runtime, user_id: str | None = None) -> list[dict[str, Any]]:
    async with rt.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(WebhookDelivery.payload).where(WebhookDelivery.event_type == "credits.low_balance")
            )
        ).all()
    data = [orjson.loads(r[0])["data"] for r in rows]
    return [d for d in data if user_id is None or d["userId"] == user_id]


async def _settle(rt: Runtime, user_id: str, expected: int) -> list[dict[str, Any]]:
    """The events of a user once ``expected`` have arrived, plus a moment to catch any extra."""

    async def enough() -> None:
        while len(await _events(rt, user_id)) < expected:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(enough(), 15)
    await asyncio.sleep(0.3)
    await jobs_of(rt).wait_idle()
    return await _events(rt, user_id)


async def _deduct(bench: Bench, user_id: str, amount: int) -> None:
    response = await bench.client.post(
        "/api/credits/deduct", json={"userId": user_id, "amount": amount}, headers=money(bench.runtime)
    )
    assert response.status_code == 201, response.text


async def test_get_defaults_then_put_own(bench: Bench) -> None:
    user = await create_user(bench.runtime)
    got = await bench.client.get("/api/credits/alerts", headers=user.headers)
    assert got.status_code == 200
    assert got.json() == {"userId": user.id, "thresholds": [20], "email": False, "inherited": True}
    put = await bench.client.put(
        "/api/credits/alerts", json={"thresholds": [100, 500, 100, 10], "email": True}, headers=user.headers
    )
    assert put.status_code == 200
    assert put.json() == {"userId": user.id, "thresholds": [500, 100, 10], "email": True, "inherited": False}
    assert (await bench.client.get("/api/credits/alerts", headers=user.headers)).json()["thresholds"] == [500, 100, 10]
    off = await bench.client.put("/api/credits/alerts", json={"thresholds": []}, headers=user.headers)
    assert off.json()["thresholds"] == []


async def test_other_users_need_permissions(bench: Bench) -> None:
    user = await create_user(bench.runtime)
    other = await create_user(bench.runtime)
    manager = await create_user(bench.runtime, roles=["manager"])
    url = f"/api/credits/alerts?userId={other.id}"
    assert_error(await bench.client.get(url, headers=user.headers), 403, "FORBIDDEN")
    assert_error(await bench.client.put(url, json={"thresholds": [5]}, headers=user.headers), 403, "FORBIDDEN")
    assert (await bench.client.get(url, headers=manager.headers)).status_code == 200  # credits:read
    assert_error(await bench.client.put(url, json={"thresholds": [5]}, headers=manager.headers), 403, "FORBIDDEN")
    done = await bench.client.put(url, json={"thresholds": [5]}, headers=bench.admin.headers)  # credits:grant
    assert done.json()["userId"] == other.id
    service = money(bench.runtime)
    assert_error(await bench.client.get("/api/credits/alerts", headers=service), 422, "VALIDATION_ERROR")
    assert (await bench.client.get(url, headers=service)).json()["thresholds"] == [5]
    missing = f"/api/credits/alerts?userId={uuid.uuid4()}"
    assert_error(await bench.client.get(missing, headers=bench.admin.headers), 404, "ACCOUNT_NOT_FOUND")
    assert_error(
        await bench.client.put(missing, json={"thresholds": [1]}, headers=bench.admin.headers), 404, "ACCOUNT_NOT_FOUND"
    )


async def test_bad_input(bench: Bench) -> None:
    user = await create_user(bench.runtime)
    assert_error(await bench.client.get("/api/credits/alerts"), 401, "UNAUTHORIZED")
    assert_error(await bench.client.put("/api/credits/alerts", json={"thresholds": [1]}), 401, "UNAUTHORIZED")
    for bad in (
        {"thresholds": [0]},
        {"thresholds": [-5]},
        {"thresholds": ["10"]},
        {"thresholds": [1.5]},
        {"thresholds": list(range(1, 12))},
        {"thresholds": [10**13]},
        {"thresholds": 10},
        {"email": True},
        {"thresholds": [1], "email": "yes"},
        {"thresholds": [1], "other": 1},
    ):
        response = await bench.client.put("/api/credits/alerts", json=bad, headers=user.headers)
        assert_error(response, 422, "VALIDATION_ERROR")
    assert_error(
        await bench.client.get("/api/credits/alerts?userId=nope", headers=user.headers), 422, "VALIDATION_ERROR"
    )


async def test_each_threshold_fires_once_per_crossing_and_rearms(bench: Bench) -> None:
    user = await create_user(bench.runtime)
    await bench.client.put("/api/credits/alerts", json={"thresholds": [100, 50]}, headers=user.headers)
    await grant(bench.client, bench.runtime, user.id, 200)
    await _deduct(bench, user.id, 90)  # 200 → 110: nothing
    await _deduct(bench, user.id, 20)  # 110 → 90: crosses 100
    await _deduct(bench, user.id, 5)  # 90 → 85: below already
    await _deduct(bench, user.id, 45)  # 85 → 40: crosses 50
    events = await _settle(bench.runtime, user.id, 2)
    assert sorted((e["threshold"], e["available"]) for e in events) == [(50, 40), (100, 90)]
    await grant(bench.client, bench.runtime, user.id, 160)  # 40 → 200: re-armed
    await _deduct(bench, user.id, 190)  # 200 → 10: crosses both at once, one event each
    events = await _settle(bench.runtime, user.id, 4)
    assert sorted((e["threshold"], e["available"]) for e in events) == [(50, 10), (50, 40), (100, 10), (100, 90)]


async def test_holds_count_and_the_global_default_applies(bench: Bench) -> None:
    user = await create_user(bench.runtime)  # no settings of its own: AIHUB_LOW_BALANCE_THRESHOLD = 20
    await grant(bench.client, bench.runtime, user.id, 30)
    hold = await bench.client.post(
        "/api/credits/holds", json={"userId": user.id, "amount": 15}, headers=money(bench.runtime)
    )
    assert hold.status_code == 201  # available 30 → 15 (balance unchanged): crosses 20
    [event] = await _settle(bench.runtime, user.id, 1)
    assert event == {"userId": user.id, "threshold": 20, "available": 15, "balance": 30}
    release = await bench.client.post(f"/api/credits/holds/{hold.json()['id']}/release", headers=money(bench.runtime))
    assert release.status_code == 200  # back to 30: re-armed
    await _deduct(bench, user.id, 11)  # 30 → 19
    assert len(await _settle(bench.runtime, user.id, 2)) == 2


async def test_no_thresholds_means_no_events(bench: Bench) -> None:
    user = await create_user(bench.runtime)
    await bench.client.put("/api/credits/alerts", json={"thresholds": []}, headers=user.headers)
    await grant(bench.client, bench.runtime, user.id, 30)
    await _deduct(bench, user.id, 29)  # passes the global 20, but the account turned alerts off
    marker = await create_user(bench.runtime)
    await grant(bench.client, bench.runtime, marker.id, 30)
    await _deduct(bench, marker.id, 29)
    await _settle(bench.runtime, marker.id, 1)  # the marker's event arrived, so the other would have too
    assert await _events(bench.runtime, user.id) == []


async def test_low_balance_email_reaches_the_smtp_sink(settings: Settings, smtp_sink: SmtpSink) -> None:
    rt = Runtime.build(settings.model_copy(update={"smtp_url": smtp_sink.url}))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            bench = await _bench(rt, client)
            quiet = await create_user(rt)
            loud = await create_user(rt)
            await client.put("/api/credits/alerts", json={"thresholds": [50], "email": False}, headers=quiet.headers)
            await client.put("/api/credits/alerts", json={"thresholds": [50], "email": True}, headers=loud.headers)
            for who in (quiet, loud):
                await grant(client, rt, who.id, 100)
                await _deduct(bench, who.id, 60)
            [message] = await asyncio.to_thread(smtp_sink.wait_for, 1)
            await _settle(rt, loud.id, 1)
    finally:
        await rt.close()
    assert message["To"] == loud.email
    assert "40 credits left" in message["Subject"]
    text = SmtpSink.text_of(message)
    assert "40 credits are available" in text
    assert "threshold of 50" in text
    assert len(smtp_sink.messages) == 1  # the one who did not opt in got none


@pytest.mark.postgres
async def test_concurrent_debits_crossing_one_threshold_emit_one_event(pg_settings: Settings) -> None:
    rt = Runtime.build(pg_settings)
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            await _bench(rt, client)
            user = await create_user(rt)
            await client.put("/api/credits/alerts", json={"thresholds": [800, 500]}, headers=user.headers)
            await grant(client, rt, user.id, 1000)
            headers = money(rt)
            body = {"userId": user.id, "amount": 1, "reason": "usage"}

            async def one(http: aiohttp.ClientSession, url: str) -> int:
                async with http.post(url, json=body, headers=headers) as response:
                    return response.status

            async for live in _live(_core_app(rt), rt):
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as http:
                    url = f"{live.url}/api/credits/deduct"
                    statuses = await asyncio.gather(*(one(http, url) for _ in range(600)))
            assert statuses.count(201) == 600  # 1000 → 400: every debit paid, two thresholds passed
            events = await _settle(rt, user.id, 2)
    finally:
        await rt.close()
    assert sorted((e["threshold"], e["available"]) for e in events) == [(500, 499), (800, 799)]


@pytest.mark.postgres
async def test_concurrent_first_puts_of_one_account(pg_settings: Settings) -> None:
    rt = Runtime.build(pg_settings)
    try:
        user = await create_user(rt)

        async def put(http: aiohttp.ClientSession, url: str, n: int) -> int:
            body = {"thresholds": [n + 1], "email": n % 2 == 0}
            async with http.put(url, json=body, headers=user.headers) as response:
                return response.status

        async for live in _live(_core_app(rt), rt):
            async with aiohttp.ClientSession() as http:
                url = f"{live.url}/api/credits/alerts"
                assert await asyncio.gather(*(put(http, url, n) for n in range(20))) == [200] * 20
                async with http.get(f"{live.url}/api/credits/alerts", headers=user.headers) as response:
                    final = await response.json()
        async with rt.engine.connect() as conn:
            ceiling = (
                await conn.execute(
                    select(CreditAccount.low_balance_threshold).where(CreditAccount.user_id == uuid.UUID(user.id))
                )
            ).scalar_one()
    finally:
        await rt.close()
    [threshold] = final["thresholds"]
    assert ceiling == threshold  # the account's pre-filter agrees with the settings that won
