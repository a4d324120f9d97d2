"""Payments, webhooks and low-balance alerts in the console, end to end: a running aihub whose
Stripe is a local fake (the real protocol: form-encoded Checkout Sessions, signed events) and a
local receiver for the signed webhook deliveries, both served from a thread of this process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from playwright.sync_api import expect

from tests.conftest import LocalServer, free_port
from tests.console.system import Api, System, new_email, sign_in
from tests.core.payments.fakes import API_KEY, WEBHOOK_SECRET, FakeStripe, completed, signature

pytestmark = pytest.mark.e2e
PASSWORD = "payments-password-1"
T = TypeVar("T")


class Loop:
    """An asyncio loop on its own thread: the fakes serve while Playwright's sync API owns this one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class CheckoutStripe(FakeStripe):
    """The fake Stripe, whose sessions' `url` is a hosted checkout page on the fake itself (the
    real one is https://checkout.stripe.com/…, which a test browser must not reach)."""

    def build_app(self) -> web.Application:
        app = super().build_app()
        app.router.add_get("/c/pay/{session_id}", self._checkout_page)
        return app

    async def _create_session(self, request: web.Request) -> web.Response:
        response = await super()._create_session(request)
        if response.status != 200 or not isinstance(response.body, bytes):
            return response
        session = self.sessions[orjson.loads(response.body)["id"]]
        session["url"] = f"{self.url}/c/pay/{session['id']}"
        return web.json_response(session)

    async def _checkout_page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["session_id"])
        if session is None:
            return web.Response(status=404, text="no such session")
        html = f"<!doctype html><title>Fake Stripe Checkout</title><h1>Pay {session['amount_total']}</h1>"
        return web.Response(text=html, content_type="text/html")


@dataclass
class Receiver(LocalServer):
    """A webhook endpoint that keeps what it receives and answers 200."""

    port: int
    runner: Any = None
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    shutdown_timeout = 0.1

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        return app

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": True})


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def stripe(loop: Loop) -> Iterator[CheckoutStripe]:
    fake = CheckoutStripe(free_port())
    loop.run(fake.start())
    yield fake
    loop.run(fake.stop())


@pytest.fixture(scope="module")
def receiver(loop: Loop) -> Iterator[Receiver]:
    fake = Receiver(free_port())
    loop.run(fake.start())
    yield fake
    loop.run(fake.stop())


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, stripe: CheckoutStripe) -> Iterator[System]:
    running = System(
        tmp_path_factory.mktemp("payments"),
        env_extra={
            "AIHUB_RATE_LIMIT_LOGIN": "1000",
            "AIHUB_RATE_LIMIT_REGISTER": "1000",
            "AIHUB_RATE_LIMIT_USER": "0",
            "AIHUB_STRIPE_API_KEY": API_KEY,
            "AIHUB_STRIPE_API_BASE": stripe.url,
            "AIHUB_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # The receiver is on loopback, which only this switch lets a webhook endpoint use.
            "AIHUB_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        },
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(running.stderr_lines[-40:])


def package(api: Api, admin: dict[str, str], credits: int, amount: int) -> dict[str, Any]:
    package_id = f"pack-{uuid.uuid4().hex[:8]}"
    body = {"name": f"Pack {package_id[-4:]}", "credits": credits, "amount": amount, "currency": "usd"}
    response = api.http.put(f"/api/payments/packages/{package_id}", headers=admin, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def sign_in_at(page: Any, email: str) -> None:
    """Sign in on whatever console page the browser is at (a reload drops the in-memory tokens)."""
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_buying_a_package_goes_to_stripe_and_the_paid_event_shows_on_the_dashboard(
    page: Any, system: System, api: Api, admin: dict[str, str], stripe: CheckoutStripe
) -> None:
    pack = package(api, admin, credits=1_500, amount=499)
    email = new_email("buyer")
    api.register(email, PASSWORD)
    sign_in(page, system, email, PASSWORD)
    expect(page.locator("[data-figure=balance]")).to_have_text("0")
    page.get_by_role("link", name="Buy credits").click()
    card = page.locator(f"[data-package={pack['id']}]")
    expect(card).to_contain_text("1,500 credits")
    expect(card).to_contain_text("$4.99")
    card.get_by_role("button", name=f"Buy {pack['name']}").click()
    # The browser is on the fake's hosted checkout page, at the url the API returned.
    page.wait_for_url(f"{stripe.url}/c/pay/**")
    expect(page.get_by_role("heading", name="Pay 499")).to_be_visible()
    session = stripe.sessions[page.url.rsplit("/", 1)[1]]
    assert session["success_url"] == f"{system.console_url}#/payments?checkout=done"
    assert session["cancel_url"] == f"{system.console_url}#/payments?checkout=cancelled"
    assert session["amount_total"] == 499
    headers = {**api.login(email, PASSWORD)}
    [pending] = api.get("/api/payments", headers).json()["items"]
    assert (pending["status"], pending["credits"], pending["packageId"]) == ("pending", 1_500, pack["id"])

    # Stripe reports the session paid, signed with the endpoint's secret exactly as Stripe does.
    body = completed(session, "pi_" + uuid.uuid4().hex[:24])
    answer = api.http.post(
        "/api/payments/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": signature(body), "Content-Type": "application/json"},
    )
    assert answer.status_code == 200 and answer.json()["outcome"] == "granted", answer.text

    # Stripe sends the customer back to the success URL: a fresh load of the console.
    page.goto(session["success_url"])
    sign_in_at(page, email)
    expect(page.get_by_role("heading", name="Payments", level=1)).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Thank you")).to_be_visible()
    row = page.get_by_role("row").filter(has_text=pack["id"])
    expect(row.locator("[data-status]")).to_have_text("paid")
    expect(row).to_contain_text("1,500")
    page.get_by_role("link", name="Dashboard").click()
    account = api.get("/api/credits/balance", headers).json()
    assert account["balance"] == 1_500
    expect(page.locator("[data-figure=balance]")).to_have_text("1,500")
    expect(page.locator("[data-figure=available]")).to_have_text("1,500")


def test_admin_saves_a_package_through_the_page(page: Any, system: System, api: Api) -> None:
    sign_in(page, system, system.admin_email, system.admin_password)
    page.get_by_role("link", name="Buy credits").click()
    manage = page.get_by_role("form", name="Save a package")
    package_id = f"page-{uuid.uuid4().hex[:6]}"
    manage.get_by_label("Package id").fill(package_id)
    manage.get_by_label("Name").fill("Page pack")
    manage.get_by_label("Credits").fill("0")
    manage.get_by_label("Amount (cents)").fill("250")
    manage.get_by_role("button", name="Save package").click()
    expect(manage.locator("[data-error-for=credits]")).not_to_be_empty()  # the API's details[] entry
    manage.get_by_label("Credits").fill("700")
    manage.get_by_role("button", name="Save package").click()
    expect(page.locator(f"[data-package={package_id}]")).to_contain_text("700 credits")
    # The admin (payments:read) sees everyone's payments, each with whose it is.
    admin = api.login(system.admin_email, system.admin_password)
    back = {"successUrl": system.console_url, "cancelUrl": system.console_url}
    opened = api.http.post("/api/payments/checkout", headers=admin, json={"packageId": package_id, **back})
    assert opened.status_code == 201, opened.text
    page.get_by_role("link", name="Dashboard").click()
    page.get_by_role("link", name="Buy credits").click()
    row = page.get_by_role("region", name="Your payments").get_by_role("row").filter(has_text=package_id)
    expect(row).to_contain_text(opened.json()["userId"])
    expect(row.locator("[data-status]")).to_have_text("pending")
    listed = {p["id"]: p for p in api.http.get("/api/payments/packages").json()["items"]}
    assert (listed[package_id]["credits"], listed[package_id]["amount"]) == (700, 250)


def _verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{expected}" in headers["webhook-signature"].split()


def test_admin_creates_a_webhook_sees_the_secret_once_tests_it_and_sees_the_delivery(
    page: Any, system: System, api: Api, admin: dict[str, str], receiver: Receiver
) -> None:
    sign_in(page, system, system.admin_email, system.admin_password)
    page.get_by_role("link", name="Webhooks").click()
    create = page.get_by_role("form", name="Add a webhook endpoint")
    url = f"{receiver.url}/hook?lane={uuid.uuid4().hex[:6]}"
    create.get_by_label("Endpoint URL").fill(url)
    create.get_by_label("promo.exhausted").uncheck()
    create.get_by_label("Description").fill("console test")
    create.get_by_role("button", name="Add endpoint").click()
    secret_box = page.locator("[data-secret]")
    expect(secret_box).to_have_text(re.compile(r"^whsec_\S{20,}$"))
    secret = secret_box.inner_text()
    [hook] = [w for w in api.get("/api/webhooks", admin).json()["items"] if w["url"] == url]
    assert "secret" not in hook and "promo.exhausted" not in hook["events"] and len(hook["events"]) == 4
    row = page.get_by_role("row").filter(has_text=url)
    expect(row).to_contain_text("console test")

    # Shown once: drawn again from the API, the page has no secret to show.
    page.get_by_role("link", name="Dashboard").click()
    page.get_by_role("link", name="Webhooks").click()
    expect(row).to_be_visible()
    expect(page.locator("[data-secret]")).to_have_count(0)
    assert secret not in page.content()

    # Edit the events.
    row.get_by_role("button", name=f"Edit {url}").click()
    edit = page.get_by_role("form", name=f"Edit {url}")
    edit.get_by_label("payment.refunded").uncheck()
    edit.get_by_role("button", name="Save changes").click()
    expect(row).not_to_contain_text("payment.refunded")
    assert api.get(f"/api/webhooks/{hook['id']}", admin).json()["events"] == [
        "credits.low_balance", "payment.succeeded", "usage.quota_reached",
    ]  # fmt: skip

    # A test event reaches the receiver, signed with the secret shown once.
    row.get_by_role("button", name=f"Send test to {url}").click()
    expect(page.get_by_role("status").filter(has_text=f"Test event queued for {url}")).to_be_visible()
    for _ in range(150):
        if receiver.received:
            break
        time.sleep(0.1)
    assert receiver.received, "the test event never arrived"
    headers, body = receiver.received[-1]
    lowered = {k.lower(): v for k, v in headers.items()}
    assert _verify(secret, lowered, body)
    assert b'"type":"webhook.test"' in body.replace(b" ", b"")

    # The deliveries list shows it delivered, with the receiver's status code and the attempt count.
    deliveries = page.get_by_role("region", name=f"Deliveries to {url}")
    delivered = deliveries.get_by_role("row").filter(has_text="webhook.test").filter(has_text="delivered")
    for _ in range(30):
        if delivered.count():
            break
        deliveries.get_by_role("button", name="Refresh deliveries").click()
        page.wait_for_timeout(300)
    expect(delivered).to_have_count(1)
    cells = delivered.get_by_role("cell").all_inner_texts()
    [listed] = api.get(f"/api/webhooks/{hook['id']}/deliveries", admin).json()["items"]
    assert listed["status"] == "delivered" and listed["attemptLog"][-1]["statusCode"] == 200
    assert cells[1:5] == ["webhook.test", "delivered", "200", str(listed["attempts"])]

    # Delete it (two steps).
    row.get_by_role("button", name=f"Delete {url}").click()
    page.get_by_role("button", name=f"Delete endpoint {url}").click()
    expect(page.get_by_role("status").filter(has_text=f"Deleted {url}.")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=url)).to_have_count(0)
    assert all(w["id"] != hook["id"] for w in api.get("/api/webhooks", admin).json()["items"])


def test_the_webhooks_link_follows_the_permissions(page: Any, system: System, api: Api, admin: dict[str, str]) -> None:
    role = f"hookreader{uuid.uuid4().hex[:6]}"
    made = api.http.post(
        "/api/roles", headers=admin, json={"name": role, "level": 10, "permissions": ["webhooks:read"]}
    )
    assert made.status_code == 201, made.text
    reader_email, plain_email = new_email("reader"), new_email("plain")
    reader_id = api.register(reader_email, PASSWORD)
    api.register(plain_email, PASSWORD)
    assigned = api.http.put(f"/api/users/{reader_id}/roles", headers=admin, json={"roles": ["user", role]})
    assert assigned.status_code == 200, assigned.text

    sign_in(page, system, plain_email, PASSWORD)
    expect(page.get_by_role("link", name="Buy credits")).to_be_visible()
    expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, system, reader_email, PASSWORD)
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("region", name="Endpoints")).to_be_visible()
    # Reading is not writing: no form, no buttons that would only meet a 403.
    expect(page.get_by_role("form", name="Add a webhook endpoint")).to_have_count(0)
    expect(page.get_by_role("button", name=re.compile("^(Send test|Edit|Delete) "))).to_have_count(0)


def test_low_balance_alerts_are_saved_with_field_errors_and_shown_again(
    page: Any, system: System, api: Api, admin: dict[str, str]
) -> None:
    email = new_email("alerted")
    user_id = api.register(email, PASSWORD)
    api.grant(admin, user_id, 5_000)
    sign_in(page, system, email, PASSWORD)
    alerts = page.get_by_role("form", name="Low-balance alerts")
    thresholds = alerts.get_by_label("Alert thresholds (credits)")
    before = api.get("/api/credits/alerts", api.login(email, PASSWORD)).json()
    assert thresholds.input_value() == ", ".join(str(t) for t in before["thresholds"])

    # A zero threshold: the API's detail (body.thresholds.1) lands next to the field.
    thresholds.fill("500, 0")
    alerts.get_by_role("button", name="Save alerts").click()
    expect(alerts.locator("[data-error-for=thresholds]")).not_to_be_empty()
    expect(thresholds).to_have_attribute("aria-invalid", "true")

    # By keyboard: type the levels, tick the email box with Space, submit with Enter.
    thresholds.fill("100, 1000")
    alerts.get_by_label("Also email me").focus()
    page.keyboard.press("Space")
    thresholds.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text="Alerts saved.")).to_be_visible()
    saved = api.get("/api/credits/alerts", api.login(email, PASSWORD)).json()
    assert (saved["thresholds"], saved["email"], saved["inherited"]) == ([1000, 100], True, False)

    # The page's data drawn again from the API.
    page.get_by_role("link", name="Transactions").click()
    page.get_by_role("link", name="Dashboard").click()
    alerts = page.get_by_role("form", name="Low-balance alerts")
    expect(alerts.get_by_label("Alert thresholds (credits)")).to_have_value("1000, 100")
    expect(alerts.get_by_label("Also email me")).to_be_checked()
    expect(page.locator("[data-alerts=summary]")).to_contain_text("1,000, 100")
    expect(alerts.locator("[data-error-for=thresholds]")).to_be_empty()
