"""The identity routes through the real gateway in front of a real auth server (PostgreSQL and
Redis): Google sign-in with a browser that follows redirects and keeps cookies, the public
routes and their per-address limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.auth.identity.fake_oidc import FakeOidc, GoogleUser
from tests.auth.identity.helpers import oauth_settings
from tests.conftest import _auth_app, _live, free_port
from tests.gateway.conftest import GatewayFactory, Upstream, gateway_settings


@dataclass
class Stack:
    url: str
    google: FakeOidc


@pytest.fixture
async def stack(
    pg_settings: Settings, google: FakeOidc, upstreams: dict[str, Upstream], start_gateway: GatewayFactory
) -> AsyncIterator[Stack]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    landing = f"{google.url}/client/landing"  # the client app's page (served by the fake)
    rt = Runtime.build(oauth_settings(pg_settings, google, public_url=public, oauth_redirect_uris=landing))
    async for auth in _live(_auth_app(rt), rt):
        settings = gateway_settings(upstreams, auth_url=auth.url, rate_limit_identity=4)
        await start_gateway(settings, store=rt.store, port=port)
        yield Stack(public, google)
    await rt.close()


async def test_google_sign_in_through_the_gateway(stack: Stack) -> None:
    stack.google.user = GoogleUser(sub="g-gw", email="gateway.person@gmail.example")
    landing = f"{stack.google.url}/client/landing"
    # A browser: follows every redirect, keeps cookies (the flow cookie's path is the public one).
    async with httpx.AsyncClient(follow_redirects=True) as browser:
        page = await browser.get(f"{stack.url}/api/auth/oauth/google/start", params={"redirectUri": landing})
        assert page.status_code == 200, page.text
        assert str(page.url).startswith(landing + "?")
        hops = [str(r.url).split("?")[0] for r in page.history]
        assert hops == [
            f"{stack.url}/api/auth/oauth/google/start",
            f"{stack.google.url}/authorize",
            f"{stack.url}/api/auth/oauth/google/callback",
        ]
        code = page.json()["code"]
        exchanged = await browser.post(f"{stack.url}/api/auth/oauth/exchange", json={"code": code})
        assert exchanged.status_code == 200, exchanged.text
        token = exchanged.json()["accessToken"]
        me = await browser.get(f"{stack.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["user"]["email"] == "gateway.person@gmail.example"
        # Another browser replaying the callback (no cookie) is refused.
        callback = page.history[-1].url
        async with httpx.AsyncClient() as other:
            replay = await other.get(str(callback))
        assert replay.status_code == 400 and replay.json()["code"] == "OAUTH_STATE_INVALID"


async def test_public_identity_routes_and_their_limit_at_the_gateway(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        # Public: no token needed to reach auth (which answers for itself).
        response = await client.post(f"{stack.url}/api/auth/verify-email", json={"token": "nope"})
        assert response.status_code == 400 and response.json()["code"] == "VERIFICATION_TOKEN_INVALID"
        # Acting for a signed-in user: the gateway wants a token.
        for method, path in (("POST", "/verify-email/request"), ("GET", "/oauth/google/link/start")):
            response = await client.request(method, f"{stack.url}/api/auth{path}")
            assert response.status_code == 401 and response.json()["code"] == "UNAUTHORIZED"
        # Reset requests: 4 per window per client address (AIHUB_RATE_LIMIT_IDENTITY), any email.
        answers = [
            await client.post(f"{stack.url}/api/auth/password-reset/request", json={"email": f"p{i}@example.com"})
            for i in range(5)
        ]
        assert [r.status_code for r in answers] == [202, 202, 202, 202, 429]
        assert answers[4].json()["code"] == "RATE_LIMIT_EXCEEDED" and "Retry-After" in answers[4].headers
