"""Payments fixtures: a fake Stripe on loopback and core pointed at it (both engines)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, _core_app, create_user, free_port
from tests.core.payments.fakes import API_KEY, WEBHOOK_SECRET, FakeStripe


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    server = FakeStripe(free_port())
    await server.start()
    yield server
    await server.stop()


def stripe_settings(settings: Settings, stripe: FakeStripe, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "stripe_api_key": SecretStr(API_KEY),
            "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            "stripe_api_base": stripe.url,
            **extra,
        }
    )


@dataclass
class Shop:
    runtime: Runtime
    client: httpx.AsyncClient
    stripe: FakeStripe
    admin: Caller
    buyer: Caller


@pytest.fixture
async def shop(settings: Settings, fake_stripe: FakeStripe) -> AsyncIterator[Shop]:
    rt = Runtime.build(stripe_settings(settings, fake_stripe))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            admin = await create_user(rt, roles=["admin"])
            buyer = await create_user(rt)
            yield Shop(rt, client, fake_stripe, admin, buyer)
    finally:
        await rt.close()


async def put_package(shop: Shop, package_id: str = "starter", credits: int = 1000, amount: int = 500) -> None:
    response = await shop.client.put(
        f"/api/payments/packages/{package_id}",
        json={"name": "Starter", "credits": credits, "amount": amount, "currency": "USD"},
        headers=shop.admin.headers,
    )
    assert response.status_code in (200, 201), response.text


async def checkout(shop: Shop, package_id: str = "starter", caller: Caller | None = None) -> dict[str, Any]:
    response = await shop.client.post(
        "/api/payments/checkout",
        json={
            "packageId": package_id,
            "successUrl": "https://app.example.com/paid?session={CHECKOUT_SESSION_ID}",
            "cancelUrl": "https://app.example.com/cancelled",
        },
        headers=(caller or shop.buyer).headers,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def deliver(client: httpx.AsyncClient, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await client.post("/api/payments/webhooks/stripe", content=body, headers=headers)
