"""Google sign-in, "Forgot password?" and the pages the emails link to, in the browser.

The system runs with Google sign-in configured against the fake OpenID provider of the
identity tests (aiohttp, on its own event loop in a thread: Playwright's sync API owns this
one) and mails through a real SMTP sink; the console's URL is accepted as a redirect URI by
default (same origin), so AIHUB_OAUTH_REDIRECT_URIS names only an unrelated client.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.sync_api import expect

from tests.auth.identity.fake_oidc import CLIENT_ID, CLIENT_SECRET, FakeOidc, GoogleUser
from tests.conftest import free_port
from tests.console.system import Api, System, new_email, sign_in
from tests.smtp_sink import SmtpSink

pytestmark = pytest.mark.e2e
PASSWORD = "identity-password-1"
NEW_PASSWORD = "a brand new password"


class ThreadedOidc:
    """The fake provider served from a private event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.server = FakeOidc(free_port(), key=key)

    def __enter__(self) -> FakeOidc:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self.server

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def google() -> Iterator[FakeOidc]:
    with ThreadedOidc() as server:
        yield server


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    mail = SmtpSink()
    mail.start()
    yield mail
    mail.stop()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, google: FakeOidc, sink: SmtpSink) -> Iterator[System]:
    running = System(
        tmp_path_factory.mktemp("identity"),
        env_extra={
            "AIHUB_RATE_LIMIT_LOGIN": "1000",
            "AIHUB_RATE_LIMIT_REGISTER": "1000",
            "AIHUB_RATE_LIMIT_USER": "0",
            "AIHUB_GOOGLE_CLIENT_ID": CLIENT_ID,
            "AIHUB_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
            "AIHUB_OIDC_GOOGLE_ISSUER": google.issuer,
            "AIHUB_OAUTH_REDIRECT_URIS": "https://app.example/landing",
            "AIHUB_SMTP_URL": sink.url,
        },
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(running.stderr_lines[-40:])


def link_for(sink: SmtpSink, to: str, page: str, timeout: float = 15.0) -> str:
    """The link to the console ``page`` in the latest email to ``to`` that has one (deliveries
    are background jobs; registering mails a verification link by itself)."""
    pattern = re.compile(rf"(http://\S+/console/#/{page}\?token=[A-Za-z0-9_\-]+)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = [pattern.search(SmtpSink.text_of(m)) for m in list(sink.messages) if m["To"] == to]
        found = [link.group(1) for link in links if link]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no email to {to} links to {page}")


def test_google_sign_in_ends_signed_in_on_the_dashboard(page: Any, system: System, api: Api, google: FakeOidc) -> None:
    config = api.http.get("/console/config.json")
    assert config.json() == {"googleSignIn": True}
    assert "default-src 'none'" in config.headers["Content-Security-Policy"]
    email = new_email("google")
    google.user = GoogleUser(sub=f"g-{email}", email=email)
    page.goto(system.console_url)
    button = page.get_by_role("button", name="Sign in with Google")
    with page.expect_response("**/api/auth/oauth/exchange") as exchange:
        button.focus()
        page.keyboard.press("Enter")  # reachable and usable from the keyboard
    assert exchange.value.status == 200
    expect(page.get_by_role("heading", name="Dashboard", level=1)).to_be_visible()
    expect(page.locator("#who")).to_contain_text(email)
    # The provider was asked to send the browser back to aihub, which sent it to the console;
    # the one-time code is gone from the address bar (and from history).
    assert google.authorize_requests[-1]["redirect_uri"] == f"{system.base_url}/api/auth/oauth/google/callback"
    assert "code=" not in page.url


def test_google_errors_are_shown_and_removed_from_the_url(page: Any, system: System) -> None:
    page.goto(system.console_url + "?error=OAUTH_DENIED")
    expect(page.get_by_role("alert")).to_contain_text("Google sign-in was cancelled or refused")
    expect(page.get_by_role("alert")).to_contain_text("OAUTH_DENIED")
    assert "error=" not in page.url
    with page.expect_response("**/api/auth/oauth/exchange") as exchange:
        page.goto(system.console_url + "?code=not-a-real-code")
    assert exchange.value.status == 400
    expect(page.get_by_role("alert")).to_contain_text("OAUTH_CODE_INVALID")
    assert "code=" not in page.url
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()


def test_password_reset_by_the_emailed_link_then_sign_in(page: Any, system: System, api: Api, sink: SmtpSink) -> None:
    email = new_email("reset")
    api.register(email, PASSWORD)
    page.goto(system.console_url)
    page.get_by_role("link", name="Forgot password?").click()
    page.get_by_label("Email").fill(email)
    with page.expect_response("**/api/auth/password-reset/request") as asked:
        page.get_by_role("button", name="Send reset link").click()
    assert asked.value.status == 202
    expect(page.get_by_role("status")).to_contain_text("email is on its way")
    link = link_for(sink, email, "reset-password")
    page.goto(link)
    token = link.rsplit("=", 1)[1]
    expect(page.get_by_role("heading", name="Choose a new password", level=1)).to_be_visible()
    assert token not in page.url  # dropped from the address bar once read
    # Two different entries are refused before anything is sent.
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("Repeat password").fill(NEW_PASSWORD + "x")
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_text("must repeat the new password")).to_be_visible()
    page.get_by_label("Repeat password").fill(NEW_PASSWORD)
    with page.expect_response("**/api/auth/password-reset") as reset:
        page.get_by_role("button", name="Set new password").click()
    assert reset.value.status == 200
    expect(page.get_by_role("status")).to_contain_text("Your password is changed")
    page.get_by_role("link", name="Back to sign in").click()
    refused = api.http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 401
    sign_in(page, system, email, NEW_PASSWORD)
    # The link was single use: opening it again ends in the API's error, shown on the page.
    page.goto(link)
    page.get_by_label("New password", exact=True).fill("yet another password")
    page.get_by_label("Repeat password").fill("yet another password")
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_role("alert")).to_contain_text("RESET_TOKEN_INVALID")


def test_verify_email_link_verifies_the_account(page: Any, system: System, api: Api, sink: SmtpSink) -> None:
    email = new_email("verify")
    api.register(email, PASSWORD)
    headers = api.login(email, PASSWORD)
    assert api.get("/api/auth/me", headers).json()["user"]["verified"] is False
    link = link_for(sink, email, "verify-email")  # registering mailed it
    with page.expect_response("**/api/auth/verify-email") as verified:
        page.goto(link)
    assert verified.value.status == 200
    expect(page.get_by_role("status")).to_contain_text(f"{email} is verified")
    assert link.rsplit("=", 1)[1] not in page.url
    me = api.get("/api/auth/me", headers)
    assert me.json()["user"]["verified"] is True
