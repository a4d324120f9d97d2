"""Packages, checkout against the fake Stripe, the signed Stripe webhook, refunds (both engines)."""

from __future__ import annotations

import time
import uuid

import httpx

from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user
from tests.core.credits.helpers import account, assert_error, assert_reconciled
from tests.core.payments.conftest import Shop, checkout, deliver, put_package
from tests.core.payments.fakes import API_KEY, completed, event, refunded, signature


async def _balance(shop: Shop) -> int:
    response = await shop.client.get("/api/credits/balance", headers=shop.buyer.headers)
    assert response.status_code == 200
    return int(response.json()["balance"])


async def _payment(shop: Shop, payment_id: str) -> dict[str, object]:
    response = await shop.client.get(f"/api/payments/{payment_id}", headers=shop.buyer.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _session_id(shop: Shop) -> str:
    return list(shop.stripe.sessions)[-1]


# ------------------------------------------------------------------------------ packages


async def test_packages_put_list_delete(shop: Shop) -> None:
    created = await shop.client.put(
        "/api/payments/packages/pro-10k",
        json={"name": "Pro", "credits": 10_000, "amount": 4_000, "currency": "EUR"},
        headers=shop.admin.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["currency"] == "eur"
    replaced = await shop.client.put(
        "/api/payments/packages/pro-10k",
        json={"name": "Pro", "credits": 12_000, "amount": 4_000, "currency": "eur", "active": True},
        headers=shop.admin.headers,
    )
    assert replaced.status_code == 200
    hidden = await shop.client.put(
        "/api/payments/packages/old",
        json={"name": "Old", "credits": 1, "amount": 100, "currency": "usd", "active": False},
        headers=shop.admin.headers,
    )
    assert hidden.status_code == 201
    listed = await shop.client.get("/api/payments/packages")  # public: no token
    assert listed.status_code == 200
    assert [(p["id"], p["credits"]) for p in listed.json()["items"]] == [("pro-10k", 12_000)]
    assert (await shop.client.delete("/api/payments/packages/pro-10k", headers=shop.admin.headers)).status_code == 204
    gone = await shop.client.delete("/api/payments/packages/pro-10k", headers=shop.admin.headers)
    assert_error(gone, 404, "PACKAGE_NOT_FOUND")
    assert (await shop.client.get("/api/payments/packages")).json()["items"] == []


async def test_package_bad_input_and_permissions(shop: Shop) -> None:
    good = {"name": "Starter", "credits": 10, "amount": 100, "currency": "usd"}
    url = "/api/payments/packages/starter"
    assert_error(await shop.client.put(url, json=good), 401, "UNAUTHORIZED")
    assert_error(await shop.client.put(url, json=good, headers=shop.buyer.headers), 403, "FORBIDDEN")
    assert_error(await shop.client.delete(url, headers=shop.buyer.headers), 403, "FORBIDDEN")
    assert_error(await shop.client.delete(url), 401, "UNAUTHORIZED")
    for bad in (
        {**good, "credits": 0},
        {**good, "credits": "10"},
        {**good, "amount": -1},
        {**good, "amount": 1.5},
        {**good, "currency": "dollars"},
        {**good, "name": ""},
        {**good, "extra": 1},
        {"name": "x"},
    ):
        assert_error(await shop.client.put(url, json=bad, headers=shop.admin.headers), 422, "VALIDATION_ERROR")
    for bad_id in ("UPPER", "-dash", "a" * 65, "sp ace"):
        response = await shop.client.put(f"/api/payments/packages/{bad_id}", json=good, headers=shop.admin.headers)
        assert_error(response, 422, "VALIDATION_ERROR")
    garbage = await shop.client.put(
        url, content=b"{not json", headers={**shop.admin.headers, "Content-Type": "application/json"}
    )
    assert_error(garbage, 400, "INVALID_JSON")


# ------------------------------------------------------------------------------ checkout


async def test_checkout_creates_a_stripe_session(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    assert started["status"] == "pending"
    assert started["url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    assert (started["packageId"], started["credits"], started["amount"], started["currency"]) == (
        "starter",
        1000,
        500,
        "usd",
    )
    [sent] = shop.stripe.requests
    form, headers = sent["form"], sent["headers"]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert headers["Idempotency-Key"] == f"aihub-checkout-{started['id']}"
    assert form["mode"] == "payment"
    assert form["line_items[0][price_data][unit_amount]"] == "500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][quantity]"] == "1"
    assert form["client_reference_id"] == started["id"]
    assert form["metadata[paymentId]"] == started["id"]
    assert form["success_url"] == "https://app.example.com/paid?session={CHECKOUT_SESSION_ID}"
    assert form["customer_email"] == shop.buyer.email
    mine = await shop.client.get("/api/payments", headers=shop.buyer.headers)
    assert [p["id"] for p in mine.json()["items"]] == [started["id"]]
    assert mine.json()["items"][0]["transactionId"] is None


async def test_checkout_bad_input_and_failures(shop: Shop) -> None:
    await put_package(shop)
    body = {"packageId": "starter", "successUrl": "https://a.example/ok", "cancelUrl": "https://a.example/no"}
    assert_error(await shop.client.post("/api/payments/checkout", json=body), 401, "UNAUTHORIZED")
    for bad in (
        {**body, "packageId": "NOPE!"},
        {**body, "successUrl": "javascript:alert(1)"},
        {**body, "cancelUrl": "ftp://a.example/x"},
        {**body, "successUrl": "https://" + "a" * 3000},
        {"packageId": "starter"},
        {**body, "amount": 1},
    ):
        response = await shop.client.post("/api/payments/checkout", json=bad, headers=shop.buyer.headers)
        assert_error(response, 422, "VALIDATION_ERROR")
    missing = await shop.client.post(
        "/api/payments/checkout", json={**body, "packageId": "missing"}, headers=shop.buyer.headers
    )
    assert_error(missing, 404, "PACKAGE_NOT_FOUND")
    await shop.client.put(
        "/api/payments/packages/off",
        json={"name": "Off", "credits": 5, "amount": 100, "currency": "usd", "active": False},
        headers=shop.admin.headers,
    )
    inactive = await shop.client.post(
        "/api/payments/checkout", json={**body, "packageId": "off"}, headers=shop.buyer.headers
    )
    assert_error(inactive, 409, "PACKAGE_INACTIVE")
    shop.stripe.fail_next = 10  # more than the library's retries
    failed = await shop.client.post("/api/payments/checkout", json=body, headers=shop.buyer.headers)
    error = assert_error(failed, 502, "PAYMENT_PROVIDER_ERROR")
    assert API_KEY not in failed.text
    assert error["details"]["provider"] == "stripe"
    shop.stripe.fail_next = 0
    assert (await shop.client.get("/api/payments", headers=shop.buyer.headers)).json()["items"] == []


async def test_unconfigured_payments(runtime: Runtime, client: httpx.AsyncClient, admin: Caller) -> None:
    """Without AIHUB_STRIPE_*: checkout answers 503, every event 400, and nothing is written."""
    await client.put(
        "/api/payments/packages/starter",
        json={"name": "S", "credits": 1, "amount": 100, "currency": "usd"},
        headers=admin.headers,
    )
    body = {"packageId": "starter", "successUrl": "https://a.example/ok", "cancelUrl": "https://a.example/no"}
    response = await client.post("/api/payments/checkout", json=body, headers=admin.headers)
    assert_error(response, 503, "PAYMENTS_NOT_CONFIGURED")
    signed = event("customer.created", {"id": "cus_1"})
    assert_error(await deliver(client, signed, signature(signed)), 400, "INVALID_SIGNATURE")
    assert (await client.get("/api/payments", headers=admin.headers)).json()["items"] == []


# ------------------------------------------------------------------------------ webhook


async def test_paid_session_grants_once_and_links_the_ledger(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    body = completed(shop.stripe.sessions[_session_id(shop)], "pi_test_1")
    first = await deliver(shop.client, body, signature(body))
    assert first.status_code == 200
    assert first.json() == {"received": True, "outcome": "granted"}
    replay = await deliver(shop.client, body, signature(body))  # the same event again
    assert replay.json() == {"received": True, "outcome": "duplicate"}
    other = completed(shop.stripe.sessions[_session_id(shop)], "pi_test_1")  # a new event id, same session
    again = await deliver(shop.client, other, signature(other))
    assert again.json() == {"received": True, "outcome": "already_paid"}
    assert await _balance(shop) == 1000
    payment = await _payment(shop, started["id"])
    assert payment["status"] == "paid"
    assert payment["paidAt"] is not None
    txns = (await shop.client.get("/api/credits/transactions", headers=shop.buyer.headers)).json()["items"]
    assert len(txns) == 1
    assert txns[0]["id"] == payment["transactionId"]
    assert (txns[0]["reason"], txns[0]["amount"]) == ("purchase", 1000)
    assert txns[0]["metadata"]["paymentId"] == started["id"]
    assert await account(shop.runtime, shop.buyer.id) == (1000, 0, 1000)


async def test_signature_invalid_stale_or_missing_changes_nothing(shop: Shop) -> None:
    await put_package(shop)
    await checkout(shop)
    body = completed(shop.stripe.sessions[_session_id(shop)], "pi_test_1")
    now = int(time.time())
    for header in (
        None,
        "",
        "garbage",
        f"t={now}",
        f"t={now},v1=",
        f"t=abc,v1={'0' * 64}",
        signature(body, secret="whsec_wrong"),
        signature(body + b" "),  # the body changed by one byte
        # Stale and from the future (5-minute tolerance), a minute beyond it: `now` was read before
        # the loop, and on a loaded machine "301 s ahead" had become 300 s by the time it was checked.
        signature(body, timestamp=now - 360),
        signature(body, timestamp=now + 360),
        f"v1={signature(body).split('v1=')[1]}",  # no timestamp
    ):
        response = await deliver(shop.client, body, header)
        assert_error(response, 400, "INVALID_SIGNATURE")
    assert await _balance(shop) == 0
    # Several v1 signatures (a secret being rolled): one good one is enough.
    good = signature(body)
    t, v1 = good.split(",")
    rolled = f"{t},v1={'0' * 64},{v1},v0=ignored"
    ok = await deliver(shop.client, body, rolled)
    assert ok.json()["outcome"] == "granted"
    # Within tolerance but not fresh: accepted.
    late = completed(shop.stripe.sessions[_session_id(shop)], "pi_test_1")
    assert (await deliver(shop.client, late, signature(late, timestamp=now - 200))).json()["outcome"] == "already_paid"


async def test_signed_but_malformed_events(shop: Shop) -> None:
    for body in (b"not json", b"[]", b'{"id": "evt_1"}', b'{"id": "evt_2", "type": "x", "data": {"object": 5}}'):
        response = await deliver(shop.client, body, signature(body))
        assert_error(response, 400, "INVALID_EVENT")
    huge = b'{"pad": "' + b"x" * (shop.runtime.settings.max_body_bytes + 1) + b'"}'
    assert_error(await deliver(shop.client, huge, signature(huge)), 413, "PAYLOAD_TOO_LARGE")
    unknown = event("customer.created", {"id": "cus_1", "object": "customer"})
    response = await deliver(shop.client, unknown, signature(unknown))
    assert response.status_code == 200
    assert response.json() == {"received": True, "outcome": "ignored"}
    stranger = event("checkout.session.completed", {"id": "cs_unknown", "payment_status": "paid"})
    response = await deliver(shop.client, stranger, signature(stranger))
    assert response.json()["outcome"] == "unmatched"


async def test_unpaid_then_expired_session(shop: Shop) -> None:
    await put_package(shop)
    started = await checkout(shop)
    session = shop.stripe.sessions[_session_id(shop)]
    unpaid = completed(session, "pi_x", paid=False)
    assert (await deliver(shop.client, unpaid, signature(unpaid))).json()["outcome"] == "not_paid"
    expired = event("checkout.session.expired", {**session, "status": "expired"})
    assert (await deliver(shop.client, expired, signature(expired))).json()["outcome"] == "failed"
    assert (await _payment(shop, started["id"]))["status"] == "failed"
    late = completed(session, "pi_x")
    assert (await deliver(shop.client, late, signature(late))).json()["outcome"] == "already_paid"
    assert await _balance(shop) == 0


async def test_package_changed_after_checkout_grants_what_was_sold(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    await put_package(shop, credits=5, amount=99_999)
    body = completed(shop.stripe.sessions[_session_id(shop)], "pi_test_1")
    assert (await deliver(shop.client, body, signature(body))).json()["outcome"] == "granted"
    assert await _balance(shop) == 1000
    assert (await _payment(shop, started["id"]))["credits"] == 1000


async def test_refund_takes_back_the_refunded_share_once(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    paid = completed(shop.stripe.sessions[_session_id(shop)], "pi_refund")
    await deliver(shop.client, paid, signature(paid))
    partial = refunded("pi_refund", 500, 125)  # a quarter
    assert (await deliver(shop.client, partial, signature(partial))).json()["outcome"] == "refunded"
    assert (await deliver(shop.client, partial, signature(partial))).json()["outcome"] == "duplicate"
    assert await _balance(shop) == 750
    payment = await _payment(shop, started["id"])
    assert (payment["status"], payment["refundedCredits"], payment["refundedAmount"]) == ("paid", 250, 125)
    same_total = refunded("pi_refund", 500, 125)  # a new event restating the same running total
    assert (await deliver(shop.client, same_total, signature(same_total))).json()["outcome"] == "already_refunded"
    full = refunded("pi_refund", 500, 500)
    assert (await deliver(shop.client, full, signature(full))).json()["outcome"] == "refunded"
    assert await _balance(shop) == 0
    payment = await _payment(shop, started["id"])
    assert (payment["status"], payment["refundedCredits"], payment["refundShortfall"]) == ("refunded", 1000, 0)
    txns = (await shop.client.get("/api/credits/transactions", headers=shop.buyer.headers)).json()["items"]
    assert sorted(t["amount"] for t in txns) == [-750, -250, 1000]
    assert {t["reason"] for t in txns if t["amount"] < 0} == {"refund"}
    await assert_reconciled(shop.runtime)


async def test_refund_of_spent_credits_records_the_shortfall(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    paid = completed(shop.stripe.sessions[_session_id(shop)], "pi_spent")
    await deliver(shop.client, paid, signature(paid))
    spend = await shop.client.post(
        "/api/credits/deduct",
        json={"userId": shop.buyer.id, "amount": 900, "reason": "usage"},
        headers=shop.admin.headers,
    )
    assert spend.status_code == 201
    full = refunded("pi_spent", 500, 500)
    assert (await deliver(shop.client, full, signature(full))).json()["outcome"] == "refunded"
    assert await _balance(shop) == 0
    payment = await _payment(shop, started["id"])
    assert (payment["status"], payment["refundShortfall"]) == ("refunded", 900)
    await assert_reconciled(shop.runtime)


# ------------------------------------------------------------------------------ listing


async def test_list_payments_self_all_and_filters(shop: Shop) -> None:
    await put_package(shop)
    mine = await checkout(shop)
    other = await create_user(shop.runtime)
    theirs = await checkout(shop, caller=other)
    body = completed(shop.stripe.sessions[_session_id(shop)], "pi_other")
    await deliver(shop.client, body, signature(body))
    own = await shop.client.get("/api/payments", headers=shop.buyer.headers)
    assert [p["id"] for p in own.json()["items"]] == [mine["id"]]
    everyone = await shop.client.get("/api/payments?limit=1", headers=shop.admin.headers)
    assert len(everyone.json()["items"]) == 1
    cursor = everyone.json()["nextCursor"]
    assert cursor
    rest = await shop.client.get(f"/api/payments?limit=1&cursor={cursor}", headers=shop.admin.headers)
    assert {everyone.json()["items"][0]["id"], rest.json()["items"][0]["id"]} == {mine["id"], theirs["id"]}
    paid = await shop.client.get("/api/payments?status=paid", headers=shop.admin.headers)
    assert [p["id"] for p in paid.json()["items"]] == [theirs["id"]]
    by_user = await shop.client.get(f"/api/payments?userId={other.id}", headers=shop.admin.headers)
    assert [p["id"] for p in by_user.json()["items"]] == [theirs["id"]]
    denied = await shop.client.get(f"/api/payments?userId={other.id}", headers=shop.buyer.headers)
    assert_error(denied, 403, "FORBIDDEN")
    hidden = await shop.client.get(f"/api/payments/{theirs['id']}", headers=shop.buyer.headers)
    assert_error(hidden, 404, "PAYMENT_NOT_FOUND")
    assert_error(
        await shop.client.get(f"/api/payments/{uuid.uuid4()}", headers=shop.admin.headers), 404, "PAYMENT_NOT_FOUND"
    )
    for query in ("status=nope", "limit=0", "limit=101", "cursor=%%%", "from=yesterday", "userId=1"):
        response = await shop.client.get(f"/api/payments?{query}", headers=shop.admin.headers)
        assert_error(response, 422, "VALIDATION_ERROR")
    assert_error(await shop.client.get("/api/payments"), 401, "UNAUTHORIZED")
    assert_error(await shop.client.get(f"/api/payments/{mine['id']}"), 401, "UNAUTHORIZED")
    assert_error(await shop.client.get("/api/payments/nope", headers=shop.admin.headers), 404, "NOT_FOUND")


async def test_billing_report_shows_purchases(shop: Shop) -> None:
    await put_package(shop, credits=1000, amount=500)
    started = await checkout(shop)
    await checkout(shop)  # never paid: not a purchase
    body = completed(shop.stripe.sessions[next(iter(shop.stripe.sessions))], "pi_report")
    await deliver(shop.client, body, signature(body))
    report = (await shop.client.get("/api/billing/report", headers=shop.buyer.headers)).json()
    [purchase] = report["purchases"]
    payment = await _payment(shop, started["id"])
    assert purchase["paymentId"] == started["id"]
    assert purchase["transactionId"] == payment["transactionId"]
    assert (purchase["credits"], purchase["amount"], purchase["currency"], purchase["status"]) == (
        1000,
        500,
        "usd",
        "paid",
    )
    assert {r["reason"]: r["credits"] for r in report["byReason"]}["purchase"] == 1000
    csv_text = (await shop.client.get("/api/billing/report?format=csv", headers=shop.buyer.headers)).text
    assert f"purchase,{started['id']},starter,1000,500,usd,paid" in csv_text
