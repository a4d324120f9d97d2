"""Driving Google sign-in like a browser: auth over ASGI, the fake provider over real HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from aihub.auth.identity.oauth import COOKIE
from aihub.config import Settings
from aihub.kit.runtime import Runtime
from aihub.models import User
from tests.auth.identity.fake_oidc import CLIENT_ID, CLIENT_SECRET, FakeOidc
from tests.conftest import _auth_app, _core_app

REDIRECT = "http://app.example/signed-in"


def oauth_settings(settings: Settings, google: FakeOidc, **extra: Any) -> Settings:
    values = {
        **settings.model_dump(),
        "google_client_id": CLIENT_ID,
        "google_client_secret": CLIENT_SECRET,
        "oidc_google_issuer": google.issuer,
        "oauth_redirect_uris": f"{REDIRECT},http://other.example/cb",
        **extra,
    }
    return Settings(**values)


@dataclass
class Env:
    rt: Runtime
    auth: httpx.AsyncClient
    core: httpx.AsyncClient
    google: FakeOidc


async def open_env(settings: Settings, google: FakeOidc) -> Env:
    rt = Runtime.build(settings)
    auth = httpx.AsyncClient(transport=httpx.ASGITransport(app=_auth_app(rt)), base_url="http://auth.test")
    core = httpx.AsyncClient(transport=httpx.ASGITransport(app=_core_app(rt)), base_url="http://core.test")
    return Env(rt, auth, core, google)


async def close_env(env: Env) -> None:
    await env.auth.aclose()
    await env.core.aclose()
    await env.rt.close()


def flow_cookie(response: httpx.Response) -> str:
    """The flow cookie's value from Set-Cookie (read by hand: its Path is the public one)."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == COOKIE:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no {COOKIE} cookie in {response.headers.get_list('set-cookie')}")


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def start(env: Env, redirect: str = REDIRECT) -> tuple[str, str]:
    """``GET /oauth/google/start`` → (the provider URL, the browser's flow cookie)."""
    response = await env.auth.get("/oauth/google/start", params={"redirectUri": redirect})
    assert response.status_code == 302, response.text
    return response.headers["location"], flow_cookie(response)


async def authorize(provider_url: str) -> str:
    """The browser at the provider, which approves at once: → our callback URL."""
    async with httpx.AsyncClient() as browser:
        response = await browser.get(provider_url)
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def callback(env: Env, callback_location: str, cookie: str | None) -> httpx.Response:
    parts = urlsplit(callback_location)
    assert parts.path == "/api/auth/oauth/google/callback"
    headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
    return await env.auth.get(f"/oauth/google/callback?{parts.query}", headers=headers)


def landing(response: httpx.Response, redirect: str = REDIRECT) -> dict[str, str]:
    """Where the callback sent the browser: the client's URI and its query."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(redirect + "?"), location
    return query_of(location)


async def google_sign_in(env: Env) -> dict[str, str]:
    provider_url, cookie = await start(env)
    return landing(await callback(env, await authorize(provider_url), cookie))


async def exchange(env: Env, code: str) -> httpx.Response:
    return await env.auth.post("/oauth/exchange", json={"code": code})


async def user_row(rt: Runtime, user_id: str) -> User:
    tx = rt.tx()
    try:
        user = await tx.session.get(User, uuid.UUID(user_id))
        assert user is not None
        return user
    finally:
        await tx.close()


async def user_by_email(rt: Runtime, email: str) -> User | None:
    from aihub.core.users import repository as users_repo

    tx = rt.tx()
    try:
        return await users_repo.by_email(tx.session, email)
    finally:
        await tx.close()
