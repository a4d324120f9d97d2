"""The web console in a real headless chromium against a running aihub (the README's run command).

Everything is found the way assistive technology finds it: by role and accessible name.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.system import MODELS, Api, System, new_email, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "console-password-1"


@dataclass
class Customer:
    email: str
    id: str
    headers: dict[str, str]


@pytest.fixture(scope="module")
def customer(api: Api, admin: dict[str, str]) -> Customer:
    """A regular user with credits and usage on three models."""
    email = new_email("customer")
    user_id = api.register(email, PASSWORD)
    api.grant(admin, user_id, 50_000)
    for (provider, model), count in zip(MODELS, (3, 2, 1), strict=True):
        for i in range(count):
            api.usage(admin, user_id, provider, model, tokens=1_000 * (i + 1))
    return Customer(email, user_id, api.login(email, PASSWORD))


def credits(text: str) -> int:
    return int(text.replace(",", ""))


def test_run_command_ends_with_the_console_address(system: System) -> None:
    lines = [line.strip() for line in system.startup_lines() if line.strip()]
    port = system.base_url.rsplit(":", 1)[1]
    assert lines[-1] == f"aihub is running: open http://127.0.0.1:{port}/console/ in a browser and sign in."
    assert any(line.startswith("password:") for line in lines[:-1])  # the admin's, printed before it


def test_user_signs_in_and_sees_the_usage_chart_with_data(
    page: Any, system: System, api: Api, customer: Customer
) -> None:
    sign_in(page, system, customer.email, PASSWORD)
    chart = page.get_by_role("img", name=re.compile("Usage"))
    expect(chart).to_be_visible()
    bars = chart.locator("rect.bar")
    expect(bars.first).to_be_visible()
    drawn = bars.evaluate_all("els => els.map(e => [e.dataset.series, Number(e.dataset.value)])")
    per_model: dict[str, int] = defaultdict(int)
    for series, value in drawn:
        per_model[series] += value
    summary = api.get("/api/usage/summary", customer.headers, groupBy="model").json()
    assert dict(per_model) == {item["key"]: item["credits"] for item in summary["items"]}
    assert set(per_model) == {f"{p}/{m}" for p, m in MODELS}
    for name in per_model:  # the legend names every model
        expect(page.locator(".legend").get_by_text(name, exact=True)).to_be_visible()
    account = api.get("/api/credits/balance", customer.headers).json()
    expect(page.locator("[data-figure=balance]")).to_have_text(f"{account['balance']:,}")
    expect(page.locator("[data-figure=available]")).to_have_text(f"{account['available']:,}")
    assert account["balance"] == 50_000 - sum(per_model.values())


def test_regular_user_is_refused_an_admin_page(page: Any, system: System, api: Api, customer: Customer) -> None:
    sign_in(page, system, customer.email, PASSWORD)
    expect(page.get_by_role("link", name="API keys")).to_be_visible()
    for admin_only in ("Users", "Promo codes", "Audit log"):
        expect(page.get_by_role("link", name=admin_only, exact=True)).to_have_count(0)
    refused = api.get("/api/users", customer.headers)
    assert refused.status_code == 403
    page.goto(f"{system.console_url}#/users")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(refused.json()["message"])
    expect(alert).to_contain_text("FORBIDDEN")
    expect(alert).to_contain_text("HTTP 403")
    expect(page.get_by_role("table")).to_have_count(0)


def test_admin_grants_credits_and_sees_the_balance_change(
    page: Any, system: System, api: Api, admin: dict[str, str]
) -> None:
    email = new_email("granted")
    user_id = api.register(email, PASSWORD)
    sign_in(page, system, system.admin_email, system.admin_password)
    page.get_by_role("link", name="Users", exact=True).click()
    page.get_by_label("Search", exact=True).fill(email)
    page.get_by_role("button", name="Search", exact=True).click()
    page.get_by_role("button", name=f"View {email}").click()
    balance = page.locator("[data-figure=user-balance]")
    expect(balance).to_have_text("0")
    adjust = page.get_by_role("form", name="Adjust credits")
    # The API's validation error lands next to the field it names (details[].field = body.amount).
    adjust.get_by_label("Amount").fill("0")
    adjust.get_by_role("button", name="Apply").click()
    amount_error = adjust.locator("[data-error-for=amount]")
    expect(amount_error).not_to_be_empty()
    expect(adjust.get_by_label("Amount")).to_have_attribute("aria-invalid", "true")
    adjust.get_by_label("Amount").fill("250")
    adjust.get_by_label("Note").fill("welcome credits")
    adjust.get_by_role("button", name="Apply").click()
    expect(balance).to_have_text("250")
    expect(amount_error).to_be_empty()
    account = api.get(f"/api/credits/accounts/{user_id}", admin).json()
    assert account["balance"] == 250
    ledger = api.get(f"/api/credits/accounts/{user_id}/transactions", admin).json()["items"]
    assert [(t["amount"], t["reason"]) for t in ledger] == [(250, "adjustment")]
    expect(page.get_by_role("cell", name="welcome credits")).to_be_visible()


def test_admin_exports_promo_codes_as_csv(page: Any, system: System, api: Api, admin: dict[str, str]) -> None:
    sign_in(page, system, system.admin_email, system.admin_password)
    page.get_by_role("link", name="Promo codes").click()
    batch = page.get_by_role("form", name="Create a batch of codes")
    prefix = "T" + new_email("x")[2:8].upper()
    batch.get_by_label("How many").fill("3")
    batch.get_by_label("Prefix").fill(prefix)
    batch.get_by_label("Credits").fill("5")
    batch.get_by_role("button", name="Create batch").click()
    expect(page.get_by_text("Created 3 codes.")).to_be_visible()
    with page.expect_download() as info:
        page.get_by_role("button", name="Export CSV").click()
    download = info.value
    assert download.suggested_filename == "promo-codes.csv"
    with open(download.path(), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(io.StringIO(handle.read())))
    listed = api.get("/api/promo-codes", admin, limit=100).json()["items"]
    assert {r["code"] for r in rows} == {p["code"] for p in listed}
    ours = [r for r in rows if r["code"].startswith(prefix)]
    assert len(ours) == 3 and all(r["credits"] == "5" and r["active"] == "true" for r in ours)
    assert list(rows[0]) == [
        "code", "credits", "maxRedemptions", "perUserLimit", "redeemedCount", "creditsGranted",
        "active", "startsAt", "expiresAt", "description", "createdAt",
    ]  # fmt: skip


def test_user_creates_sees_once_and_revokes_an_api_key(page: Any, system: System, api: Api, customer: Customer) -> None:
    sign_in(page, system, customer.email, PASSWORD)
    page.get_by_role("link", name="API keys").click()
    page.locator("form[aria-label='Create an API key'], .notice.info").first.wait_for()
    create = page.get_by_role("form", name="Create an API key")
    expect(create).to_have_count(1, timeout=1_000)
    name = "console " + new_email("k")[:8]
    create.get_by_label("Key name").fill(name)
    create.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-secret]")
    expect(secret).to_have_text(re.compile(r"^ahk_\S{20,}$"))
    key = secret.inner_text()
    assert api.http.get("/api/users/me", headers={"X-API-Key": key}).status_code == 200
    listed = api.get("/api/keys", customer.headers).json()["items"]
    assert [k["name"] for k in listed if k["name"] == name] == [name]
    assert all("key" not in k for k in listed)  # the key itself is never listed again
    page.get_by_role("button", name=f"Revoke {name}", exact=True).click()
    page.get_by_role("button", name=f"Revoke key {name}").click()
    row = page.get_by_role("row").filter(has_text=name)
    expect(row).to_contain_text("revoked")
    refused = api.http.get("/api/users/me", headers={"X-API-Key": key})
    assert refused.status_code == 401 and refused.json()["code"] == "INVALID_API_KEY"


@pytest.mark.parametrize(
    ("route", "probe", "absent_text", "present"),
    [
        ("keys", "/api/keys", "API keys are not available", "Create an API key"),
        ("payments", "/api/payments/packages", "Payments are not configured", "Buy credits"),
        ("webhooks", "/api/webhooks", "Webhooks are not available", "Add a webhook endpoint"),
    ],
)
def test_pages_of_apis_this_server_lacks_say_so(
    page: Any, system: System, api: Api, admin: dict[str, str], route: str, probe: str, absent_text: str, present: str
) -> None:
    """Issue 17's keys and issue 18's payments and webhooks: absent → a clear state; present → the page."""
    sign_in(page, system, system.admin_email, system.admin_password)
    page.goto(f"{system.console_url}#/{route}")
    answer = api.get(probe, admin)
    if answer.status_code == 404 and answer.json()["code"] == "NOT_FOUND":
        expect(page.get_by_role("status").filter(has_text=absent_text)).to_be_visible()
    else:
        expect(page.get_by_label(present).first).to_be_visible()
        expect(page.get_by_text(absent_text)).to_have_count(0)


def test_buying_without_stripe_says_payments_are_not_configured(
    page: Any, system: System, api: Api, admin: dict[str, str], customer: Customer
) -> None:
    """This server has no AIHUB_STRIPE_API_KEY: packages list, a checkout answers 503."""
    package_id = "nostripe-" + new_email("p")[2:8]
    made = api.http.put(
        f"/api/payments/packages/{package_id}",
        headers=admin,
        json={"name": "No Stripe", "credits": 100, "amount": 100, "currency": "usd"},
    )
    assert made.status_code == 201, made.text
    refused = api.http.post(
        "/api/payments/checkout",
        headers=customer.headers,
        json={"packageId": package_id, "successUrl": system.console_url, "cancelUrl": system.console_url},
    )
    assert (refused.status_code, refused.json()["code"]) == (503, "PAYMENTS_NOT_CONFIGURED")
    sign_in(page, system, customer.email, PASSWORD)
    page.get_by_role("link", name="Buy credits").click()
    buy = page.get_by_role("button", name="Buy No Stripe")
    buy.click()
    expect(page.get_by_role("status").filter(has_text="Payments are not configured")).to_be_visible()
    expect(buy).to_be_disabled()
    expect(page.get_by_role("alert")).to_have_count(0)
    assert page.url.startswith(system.console_url)


def test_keyboard_only_sign_in_at_phone_width_and_sign_out(browser: Any, system: System, customer: Customer) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto(system.console_url)
        expect(page.get_by_label("Email")).to_be_focused()
        page.keyboard.type(customer.email)
        page.keyboard.press("Tab")
        expect(page.get_by_label("Password")).to_be_focused()
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
        expect(page.get_by_role("img", name=re.compile("Usage"))).to_be_visible()
        # Nothing wider than the phone: no sideways scrolling of the page.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # The navigation folds behind a menu button, which the keyboard opens.
        menu = page.get_by_role("button", name="Menu")
        expect(page.get_by_role("link", name="Transactions")).to_be_hidden()
        menu.focus()
        page.keyboard.press("Enter")
        expect(menu).to_have_attribute("aria-expanded", "true")
        page.get_by_role("link", name="Transactions").focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Transactions", level=1)).to_be_visible()
        expect(page.get_by_role("cell", name="adjustment")).to_be_visible()
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    finally:
        context.close()


def test_billing_export_shows_the_job_and_downloads_the_csv(
    page: Any, system: System, api: Api, admin: dict[str, str], customer: Customer
) -> None:
    """Every all-users export is a report job: the page follows it, then hands over the file."""
    sign_in(page, system, system.admin_email, system.admin_password)
    page.get_by_role("link", name="Billing").click()
    exporter = page.get_by_role("form", name="Export every user's billing")
    with page.expect_download() as info:
        exporter.get_by_role("button", name="Export all users (CSV)").click()
    with open(info.value.path(), newline="", encoding="utf-8") as handle:
        rows = {row["email"]: row for row in csv.DictReader(handle)}
    account = api.get("/api/credits/balance", customer.headers).json()
    assert credits(rows[customer.email]["closing_balance"]) == account["balance"]
    expect(page.get_by_role("status").filter(has_text="Report ready")).to_be_visible()
    jobs = api.get("/api/billing/jobs", admin).json()["items"]
    assert jobs[0]["kind"] == "billing_export" and jobs[0]["status"] == "succeeded"


def test_sign_in_offers_no_google_button_when_google_is_not_configured(page: Any, system: System) -> None:
    with page.expect_response("**/console/config.json") as config:
        page.goto(system.console_url)
    assert config.value.json() == {"googleSignIn": False}
    expect(page.get_by_role("link", name="Forgot password?")).to_be_visible()
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Sign in with Google")).to_have_count(0)
