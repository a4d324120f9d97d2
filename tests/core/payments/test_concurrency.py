"""The Stripe webhook under concurrency, on PostgreSQL through a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from sqlalchemy import func, select

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from aihub.models import PaymentEvent
from tests.conftest import LiveServer, _core_app, _live, create_user
from tests.core.credits.helpers import account, assert_reconciled
from tests.core.payments.conftest import Shop, checkout, put_package, stripe_settings
from tests.core.payments.fakes import FakeStripe, completed, refunded, signature

pytestmark = pytest.mark.postgres


@pytest.fixture
async def live_shop(pg_settings: Settings, fake_stripe: FakeStripe) -> AsyncIterator[tuple[Shop, LiveServer]]:
    rt = Runtime.build(stripe_settings(pg_settings, fake_stripe))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            shop = Shop(rt, client, fake_stripe, await create_user(rt, roles=["admin"]), await create_user(rt))
            async for live in _live(_core_app(rt), rt):
                yield shop, live
    finally:
        await rt.close()


async def _deliver_many(url: str, body: bytes, header: str, count: int) -> list[tuple[int, str]]:
    headers = {"Content-Type": "application/json", "Stripe-Signature": header}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count)) as http:

        async def one() -> tuple[int, str]:
            async with http.post(f"{url}/api/payments/webhooks/stripe", data=body, headers=headers) as response:
                return response.status, (await response.json())["outcome"]

        return await asyncio.gather(*(one() for _ in range(count)))


async def test_same_paid_event_50_times_at_once_grants_once(live_shop: tuple[Shop, LiveServer]) -> None:
    shop, live = live_shop
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    session = shop.stripe.sessions[list(shop.stripe.sessions)[-1]]
    body = completed(session, "pi_concurrent")
    results = await _deliver_many(live.url, body, signature(body), 50)
    assert {status for status, _ in results} == {200}
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count("granted") == 1
    assert outcomes.count("duplicate") == 49
    assert await account(shop.runtime, shop.buyer.id) == (1000, 0, 1000)  # balance == sum of ledger
    async with shop.runtime.engine.connect() as conn:
        events = (await conn.execute(select(func.count()).select_from(PaymentEvent))).scalar_one()
    assert events == 1
    payment = (await shop.client.get(f"/api/payments/{started['id']}", headers=shop.buyer.headers)).json()
    assert payment["status"] == "paid"
    await assert_reconciled(shop.runtime)


async def test_distinct_events_for_one_session_at_once_grant_once(live_shop: tuple[Shop, LiveServer]) -> None:
    """Stripe may send the completion under several event ids (and async_payment_succeeded): the
    session guard, not the event id, stops those."""
    shop, live = live_shop
    await put_package(shop, credits=700, amount=300)
    await checkout(shop)
    session = shop.stripe.sessions[list(shop.stripe.sessions)[-1]]
    bodies = [completed(session, "pi_many") for _ in range(30)]
    async with aiohttp.ClientSession() as http:

        async def one(body: bytes) -> str:
            headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body)}
            async with http.post(f"{live.url}/api/payments/webhooks/stripe", data=body, headers=headers) as response:
                assert response.status == 200
                return str((await response.json())["outcome"])

        outcomes = await asyncio.gather(*(one(b) for b in bodies))
    assert outcomes.count("granted") == 1
    assert outcomes.count("already_paid") == 29
    assert await account(shop.runtime, shop.buyer.id) == (700, 0, 700)


async def test_concurrent_refund_events_take_back_once(live_shop: tuple[Shop, LiveServer]) -> None:
    shop, live = live_shop
    await put_package(shop, credits=1000, amount=500)
    await checkout(shop)
    session = shop.stripe.sessions[list(shop.stripe.sessions)[-1]]
    paid = completed(session, "pi_refund_race")
    assert (await _deliver_many(live.url, paid, signature(paid), 1))[0] == (200, "granted")
    # Twenty distinct events all stating the full refund (the running total), at once.
    bodies = [refunded("pi_refund_race", 500, 500) for _ in range(20)]
    async with aiohttp.ClientSession() as http:

        async def one(body: bytes) -> str:
            headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body)}
            async with http.post(f"{live.url}/api/payments/webhooks/stripe", data=body, headers=headers) as response:
                return str((await response.json())["outcome"])

        outcomes = await asyncio.gather(*(one(b) for b in bodies))
    assert outcomes.count("refunded") == 1
    assert outcomes.count("already_refunded") == 19
    assert await account(shop.runtime, shop.buyer.id) == (0, 0, 0)
    await assert_reconciled(shop.runtime)


async def test_concurrent_first_puts_of_a_package_and_checkouts(live_shop: tuple[Shop, LiveServer]) -> None:
    shop, live = live_shop
    body = {"name": "Race", "credits": 10, "amount": 100, "currency": "usd"}
    async with aiohttp.ClientSession() as http:

        async def put() -> int:
            url = f"{live.url}/api/payments/packages/race"
            async with http.put(url, json=body, headers=shop.admin.headers) as response:
                return response.status

        statuses = await asyncio.gather(*(put() for _ in range(20)))
        assert sorted(statuses) == [200] * 19 + [201]

        async def buy() -> int:
            checkout_body = {
                "packageId": "race",
                "successUrl": "https://a.example/ok",
                "cancelUrl": "https://a.example/no",
            }
            url = f"{live.url}/api/payments/checkout"
            async with http.post(url, json=checkout_body, headers=shop.buyer.headers) as response:
                return response.status

        assert await asyncio.gather(*(buy() for _ in range(20))) == [201] * 20
    assert len(shop.stripe.sessions) == 20
    listed = (await shop.client.get("/api/payments?limit=100", headers=shop.buyer.headers)).json()["items"]
    assert len({p["id"] for p in listed}) == 20
