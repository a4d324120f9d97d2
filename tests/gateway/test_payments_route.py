"""Payments through the gateway: the Stripe webhook is public and reaches core byte for byte."""

from __future__ import annotations

import aiohttp

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.conftest import _core_app, _live, create_user
from tests.core.payments.conftest import fake_stripe as fake_stripe  # the fixture, shared
from tests.core.payments.conftest import stripe_settings
from tests.core.payments.fakes import FakeStripe, signature
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings


async def test_stripe_webhook_is_public_and_its_body_untouched(
    pg_settings: Settings,
    fake_stripe: FakeStripe,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    rt = Runtime.build(stripe_settings(pg_settings, fake_stripe))
    try:
        admin = await create_user(rt, roles=["admin"])
        async for core in _live(_core_app(rt), rt):
            gw = await start_gateway(gateway_settings(upstreams, core_url=core.url), store=rt.store)
            package = {"name": "S", "credits": 10, "amount": 100, "currency": "usd"}
            async with http.put(f"{gw.url}/api/payments/packages/s", json=package, headers=bearer(admin.token)) as r:
                assert r.status == 201, await r.text()
            async with http.get(f"{gw.url}/api/payments/packages") as r:  # public: no token
                assert r.status == 200
                assert [p["id"] for p in (await r.json())["items"]] == ["s"]
            async with http.get(f"{gw.url}/api/payments") as r:
                assert r.status == 401  # the rest of /api/payments needs a token
            async with http.get(f"{gw.url}/api/webhooks") as r:
                assert r.status == 401
            # Odd spacing, key order and a non-ASCII character: any re-encoding would break the signature.
            body = '{"type":  "customer.created", "id":"evt_gw_1",\n "data": {"object": {"id": "cus_ü"}}}'.encode()
            headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body)}
            async with http.post(f"{gw.url}/api/payments/webhooks/stripe", data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json()) == {"received": True, "outcome": "ignored"}
            headers["Stripe-Signature"] = signature(body + b" ")
            async with http.post(f"{gw.url}/api/payments/webhooks/stripe", data=body, headers=headers) as r:
                assert r.status == 400
                assert (await r.json())["code"] == "INVALID_SIGNATURE"
    finally:
        await rt.close()
