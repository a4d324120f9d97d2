"""Webhook endpoints: CRUD, URL rules (SSRF), signed deliveries with retries (both engines)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from aihub.config import Settings
from aihub.core.webhooks import jobs as webhook_jobs
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from tests.conftest import _core_app, create_user, free_port
from tests.core.credits.helpers import assert_error, grant, money
from tests.core.webhooks.conftest import Hub, fast, register
from tests.core.webhooks.receiver import Receiver, verify


async def _deliveries(hub: Hub, webhook_id: str) -> list[dict[str, Any]]:
    response = await hub.client.get(f"/api/webhooks/{webhook_id}/deliveries", headers=hub.admin.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


async def _settled(hub: Hub, webhook_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]]:
        while True:
            items = await _deliveries(hub, webhook_id)
            if items and all(d["status"] != "pending" for d in items):
                return items
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(done(), timeout)


async def test_low_balance_event_fails_twice_then_is_delivered_signed(hub: Hub, receiver: Receiver) -> None:
    created = await register(hub, receiver.url, ["credits.low_balance"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    user = await create_user(hub.runtime)
    await grant(hub.client, hub.runtime, user.id, 100)
    put = await hub.client.put("/api/credits/alerts", json={"thresholds": [50], "email": False}, headers=user.headers)
    assert put.status_code == 200, put.text
    for amount in (30, 30, 10):  # 100 → 70 → 40 (crosses 50) → 30
        response = await hub.client.post(
            "/api/credits/deduct", json={"userId": user.id, "amount": amount}, headers=money(hub.runtime)
        )
        assert response.status_code == 201
    [delivery] = await _settled(hub, created["id"])
    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 3
    assert [a["statusCode"] for a in delivery["attemptLog"]] == [500, 500, 204]
    assert [a["attempt"] for a in delivery["attemptLog"]] == [1, 2, 3]
    assert delivery["attemptLog"][0]["error"] == "HTTP 500"
    assert len(receiver.calls) == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.calls}
    assert ids == {delivery["webhookId"]}  # one message, three attempts
    for headers, body in receiver.calls:
        assert verify(secret, headers, body)
        assert not verify("whsec_" + "A" * 44, headers, body)
        assert headers["content-type"] == "application/json"
    payload = orjson.loads(receiver.calls[-1][1])
    assert payload["type"] == "credits.low_balance"
    assert payload["data"] == {"userId": user.id, "threshold": 50, "available": 40, "balance": 40}
    assert payload["timestamp"].endswith("Z")
    await asyncio.sleep(0.3)
    assert len(receiver.calls) == 3  # nothing more once delivered


async def test_test_event_and_subscription_filter(hub: Hub, receiver: Receiver) -> None:
    receiver.failures = 0
    created = await register(hub, receiver.url, ["payment.succeeded"])
    other = await register(hub, receiver.url.replace("/hook", "/other"), ["promo.exhausted"])
    sent = await hub.client.post(f"/api/webhooks/{created['id']}/test", headers=hub.admin.headers)
    assert sent.status_code == 202
    assert sent.json()["webhookId"].startswith("msg_")
    [delivery] = await _settled(hub, created["id"])
    assert delivery["eventType"] == "webhook.test"
    assert delivery["status"] == "delivered"
    headers, body = receiver.calls[0]
    assert verify(created["secret"], headers, body)
    assert orjson.loads(body)["data"] == {"webhookId": created["id"]}
    assert await _deliveries(hub, other["id"]) == []


async def test_receiver_down_retries_then_gives_up(settings: Settings) -> None:
    """A dead endpoint is retried with back-off until the retry window ends, then failed."""
    rt = Runtime.build(fast(settings, webhook_retry_hours=1 / 3600))  # a one-second window
    dead = free_port()
    try:
        await jobs_of(rt).start(webhook_jobs.periodic(rt))
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            hub = Hub(rt, client, await create_user(rt, roles=["admin"]))
            created = await register(hub, f"http://127.0.0.1:{dead}/hook", ["payment.succeeded"])
            assert (
                await client.post(f"/api/webhooks/{created['id']}/test", headers=hub.admin.headers)
            ).status_code == 202
            [delivery] = await _settled(hub, created["id"])
    finally:
        await rt.close()
    assert delivery["status"] == "failed"
    assert delivery["attempts"] >= 2
    assert all(a["statusCode"] is None and a["error"] for a in delivery["attemptLog"])
    assert delivery["nextAttemptAt"] is None


async def test_crud_and_secret_shown_once(hub: Hub) -> None:
    created = await register(hub, "https://hooks.example.com/aihub", ["payment.succeeded", "payment.refunded"])
    one = await hub.client.get(f"/api/webhooks/{created['id']}", headers=hub.admin.headers)
    assert one.status_code == 200
    assert "secret" not in one.json()
    listed = await hub.client.get("/api/webhooks", headers=hub.admin.headers)
    assert [w["id"] for w in listed.json()["items"]] == [created["id"]]
    assert created["secret"] not in listed.text
    patched = await hub.client.patch(
        f"/api/webhooks/{created['id']}",
        json={"events": ["usage.quota_reached"], "active": False, "description": "quota"},
        headers=hub.admin.headers,
    )
    assert patched.status_code == 200
    assert (patched.json()["events"], patched.json()["active"]) == (["usage.quota_reached"], False)
    audit = await hub.client.get("/api/audit-logs?entityType=webhook_endpoint", headers=hub.admin.headers)
    assert created["secret"] not in audit.text
    assert (await hub.client.delete(f"/api/webhooks/{created['id']}", headers=hub.admin.headers)).status_code == 204
    gone = await hub.client.get(f"/api/webhooks/{created['id']}", headers=hub.admin.headers)
    assert_error(gone, 404, "WEBHOOK_NOT_FOUND")


async def test_bad_input_and_unauthorised(hub: Hub) -> None:
    user = await create_user(hub.runtime)
    manager = await create_user(hub.runtime, roles=["manager"])
    good = {"url": "https://hooks.example.com/x", "events": ["payment.succeeded"]}
    assert_error(await hub.client.post("/api/webhooks", json=good), 401, "UNAUTHORIZED")
    assert_error(await hub.client.post("/api/webhooks", json=good, headers=user.headers), 403, "FORBIDDEN")
    assert_error(await hub.client.post("/api/webhooks", json=good, headers=manager.headers), 403, "FORBIDDEN")
    assert_error(await hub.client.get("/api/webhooks", headers=user.headers), 403, "FORBIDDEN")
    assert (await hub.client.get("/api/webhooks", headers=manager.headers)).status_code == 200  # webhooks:read
    for bad in (
        {**good, "events": []},
        {**good, "events": ["credits.unknown"]},
        {**good, "events": "payment.succeeded"},
        {**good, "url": "x" * 3000},
        {**good, "extra": True},
        {"events": ["payment.succeeded"]},
    ):
        response = await hub.client.post("/api/webhooks", json=bad, headers=hub.admin.headers)
        assert_error(response, 422, "VALIDATION_ERROR")
    for url in (
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "gopher://x.example/",
        "https://u:p@x.example/",
        "http:///nohost",
        "http://[::1",
    ):
        response = await hub.client.post("/api/webhooks", json={**good, "url": url}, headers=hub.admin.headers)
        assert_error(response, 422, "INVALID_WEBHOOK_URL")
    created = await register(hub, "https://hooks.example.com/x", ["payment.succeeded"])
    wid = created["id"]
    for method, path, body in (
        ("PATCH", f"/api/webhooks/{wid}", {"url": "ftp://x.example/"}),
        ("PATCH", f"/api/webhooks/{wid}", {"secret": "mine"}),
        ("PATCH", f"/api/webhooks/{wid}", {"events": []}),
    ):
        response = await hub.client.request(method, path, json=body, headers=hub.admin.headers)
        assert response.status_code == 422, response.text
    for method, path in (
        ("GET", f"/api/webhooks/{wid}"),
        ("PATCH", f"/api/webhooks/{wid}"),
        ("DELETE", f"/api/webhooks/{wid}"),
        ("GET", f"/api/webhooks/{wid}/deliveries"),
        ("POST", f"/api/webhooks/{wid}/test"),
    ):
        json_body: dict[str, object] | None = {} if method == "PATCH" else None
        assert_error(await hub.client.request(method, path, json=json_body), 401, "UNAUTHORIZED")
        response = await hub.client.request(method, path, json=json_body, headers=user.headers)
        assert_error(response, 403, "FORBIDDEN")
    missing = "00000000-0000-0000-0000-000000000000"
    for method, path in (
        ("GET", f"/api/webhooks/{missing}"),
        ("DELETE", f"/api/webhooks/{missing}"),
        ("GET", f"/api/webhooks/{missing}/deliveries"),
        ("POST", f"/api/webhooks/{missing}/test"),
    ):
        assert_error(await hub.client.request(method, path, headers=hub.admin.headers), 404, "WEBHOOK_NOT_FOUND")
    assert_error(await hub.client.get("/api/webhooks/not-a-uuid", headers=hub.admin.headers), 404, "NOT_FOUND")


async def test_private_addresses_refused_in_production_mode(settings: Settings) -> None:
    rt = Runtime.build(settings.model_copy(update={"webhook_allow_private_addresses": False}))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            admin = await create_user(rt, roles=["admin"])
            for url in (
                "http://127.0.0.1:8080/x",
                "http://10.1.2.3/x",
                "http://169.254.169.254/latest/meta-data",
                "http://[::1]/x",
                "http://[::ffff:127.0.0.1]/x",
                "http://localhost/x",
                "https://db.internal/x",
            ):
                response = await client.post(
                    "/api/webhooks", json={"url": url, "events": ["payment.succeeded"]}, headers=admin.headers
                )
                assert_error(response, 422, "INVALID_WEBHOOK_URL")
            public = await client.post(
                "/api/webhooks",
                json={"url": "https://hooks.example.com/x", "events": ["payment.succeeded"]},
                headers=admin.headers,
            )
            assert public.status_code == 201
    finally:
        await rt.close()
    assert Settings(env="production", jwt_secret="x" * 40).webhook_allow_private_addresses is None


async def test_resolver_refuses_names_of_private_addresses() -> None:
    """DNS rebinding: a public-looking name that resolves to loopback is refused at connect time."""
    resolver = webhook_jobs.PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="private"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
