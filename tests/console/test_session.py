"""The console's session: tokens in memory, renewed before they expire, dropped on sign-out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.system import Api, System, new_email, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "session-password-1"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Its own aihub, with the shortest access-token life the settings allow (30 s)."""
    running = System(
        tmp_path_factory.mktemp("session"),
        # No refresh-reuse grace: the test presents the spent token again at once and expects reuse.
        env_extra={
            "AIHUB_ACCESS_TOKEN_TTL_SECONDS": "30",
            "AIHUB_RATE_LIMIT_LOGIN": "1000",
            "AIHUB_REFRESH_REUSE_GRACE_SECONDS": "0",
        },
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(running.stderr_lines[-40:])


def test_access_token_is_renewed_before_it_expires(page: Any, system: System, api: Api) -> None:
    email = new_email("renew")
    api.register(email, PASSWORD)
    with page.expect_response("**/api/auth/login") as login:
        sign_in(page, system, email, PASSWORD)
    first = login.value.json()
    # Half-way through a 30 s life the console spends the refresh token for a new pair.
    with page.expect_response("**/api/auth/refresh", timeout=40_000) as renewal:
        pass
    assert renewal.value.status == 200
    renewed = renewal.value.json()
    assert renewed["accessToken"] != first["accessToken"]
    with page.expect_request("**/api/credits/transactions**") as call:
        page.get_by_role("link", name="Transactions").click()
    assert call.value.headers["authorization"] == f"Bearer {renewed['accessToken']}"
    expect(page.get_by_role("heading", name="Transactions", level=1)).to_be_visible()
    # The first refresh token was spent by the renewal: presenting it again is refused.
    reused = api.http.post("/api/auth/refresh", json={"refreshToken": first["refreshToken"]})
    assert reused.status_code == 401 and reused.json()["code"] == "REFRESH_TOKEN_REUSED"


def test_tokens_live_in_memory_only_and_sign_out_revokes_them(page: Any, system: System, api: Api) -> None:
    email = new_email("memory")
    api.register(email, PASSWORD)
    with page.expect_response("**/api/auth/login") as login:
        sign_in(page, system, email, PASSWORD)
    pair = login.value.json()
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie, location.href]")
    assert stored[:3] == [0, 0, ""]
    assert pair["accessToken"] not in stored[3] and pair["refreshToken"] not in stored[3]
    assert page.context.cookies() == []
    page.reload()  # nothing was kept: a reload asks to sign in again
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    with page.expect_response("**/api/auth/login") as again:
        sign_in(page, system, email, PASSWORD)
    second = again.value.json()
    with page.expect_response("**/api/auth/logout") as logout:
        page.get_by_role("button", name="Sign out").click()
    assert logout.value.status == 204
    expect(page.get_by_label("Email")).to_be_visible()
    # Signing out blacklists the access token and revokes the refresh family, for every service.
    revoked = api.http.get("/api/users/me", headers={"Authorization": f"Bearer {second['accessToken']}"})
    assert revoked.status_code == 401 and revoked.json()["code"] == "TOKEN_REVOKED"
    refused = api.http.post("/api/auth/refresh", json={"refreshToken": second["refreshToken"]})
    assert refused.status_code == 401
