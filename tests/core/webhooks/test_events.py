"""The other event types reach subscribed endpoints: promo.exhausted, usage.quota_reached, payment.*"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from aihub.config import Settings
from aihub.core.webhooks import jobs as webhook_jobs
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from tests.conftest import _core_app, create_user, free_port
from tests.core.payments.conftest import Shop, checkout, deliver, put_package, stripe_settings
from tests.core.payments.conftest import fake_stripe as fake_stripe  # the fixture, shared
from tests.core.payments.fakes import FakeStripe, completed, refunded, signature
from tests.core.test_usage import event, fund, reporter
from tests.core.webhooks.conftest import Hub, fast, register
from tests.core.webhooks.receiver import Receiver, verify


@pytest.fixture
async def ok_receiver() -> AsyncIterator[Receiver]:
    server = Receiver(free_port())
    await server.start()
    yield server
    await server.stop()


def _bodies(receiver: Receiver, kind: str) -> list[dict[str, object]]:
    return [b for b in (orjson.loads(body) for _, body in receiver.calls) if b["type"] == kind]


async def _quiet(receiver: Receiver) -> None:
    """Let any further (wrong) delivery arrive before counting."""
    await asyncio.sleep(0.4)


async def test_promo_exhausted_once(hub: Hub, ok_receiver: Receiver) -> None:
    created = await register(hub, ok_receiver.url, ["promo.exhausted"])
    promo = await hub.client.post(
        "/api/promo-codes", json={"code": "LAST2", "credits": 5, "maxRedemptions": 2}, headers=hub.admin.headers
    )
    assert promo.status_code == 201, promo.text
    for _ in range(3):
        user = await create_user(hub.runtime)
        await hub.client.post("/api/promo-codes/redeem", json={"code": "last2"}, headers=user.headers)
    await ok_receiver.wait(1)
    await _quiet(ok_receiver)
    [body] = _bodies(ok_receiver, "promo.exhausted")
    assert body["data"] == {"promoId": promo.json()["id"], "code": "LAST2", "maxRedemptions": 2}
    headers, raw = ok_receiver.calls[0]
    assert verify(created["secret"], headers, raw)


async def test_usage_quota_reached_once_per_period(hub: Hub, ok_receiver: Receiver) -> None:
    await register(hub, ok_receiver.url, ["usage.quota_reached"])
    user = await create_user(hub.runtime)
    await fund(hub.runtime, user.id, 10_000)
    quota = await hub.client.put(
        f"/api/quotas/user:{user.id}", headers=hub.admin.headers, json={"period": "day", "maxRequests": 1}
    )
    assert quota.status_code in (200, 201), quota.text
    statuses = [
        (await hub.client.post("/api/usage/events", headers=reporter(hub.runtime), json=event(user))).status_code
        for _ in range(4)
    ]
    assert statuses == [201, 429, 429, 429]
    await ok_receiver.wait(1)
    await _quiet(ok_receiver)
    [body] = _bodies(ok_receiver, "usage.quota_reached")
    data = body["data"]
    assert isinstance(data, dict)
    assert (data["userId"], data["scope"], data["period"]) == (user.id, f"user:{user.id}", "day")


async def test_payment_events(settings: Settings, fake_stripe: FakeStripe, ok_receiver: Receiver) -> None:
    rt = Runtime.build(stripe_settings(fast(settings), fake_stripe))
    try:
        await jobs_of(rt).start(webhook_jobs.periodic(rt))
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            shop = Shop(rt, client, fake_stripe, await create_user(rt, roles=["admin"]), await create_user(rt))
            await register(Hub(rt, client, shop.admin), ok_receiver.url, ["payment.succeeded", "payment.refunded"])
            await put_package(shop, credits=1000, amount=500)
            started = await checkout(shop)
            paid = completed(fake_stripe.sessions[list(fake_stripe.sessions)[-1]], "pi_events")
            await deliver(client, paid, signature(paid))
            back = refunded("pi_events", 500, 250)
            await deliver(client, back, signature(back))
            await ok_receiver.wait(2)
            await _quiet(ok_receiver)
            payment = (await client.get(f"/api/payments/{started['id']}", headers=shop.buyer.headers)).json()
    finally:
        await rt.close()
    [succeeded] = _bodies(ok_receiver, "payment.succeeded")
    assert succeeded["data"] == {
        "paymentId": started["id"],
        "userId": shop.buyer.id,
        "packageId": "starter",
        "credits": 1000,
        "amount": 500,
        "currency": "usd",
        "transactionId": payment["transactionId"],
    }
    [refund] = _bodies(ok_receiver, "payment.refunded")
    data = refund["data"]
    assert isinstance(data, dict)
    assert (data["paymentId"], data["refundedAmount"], data["creditsTakenBack"]) == (started["id"], 250, 500)
