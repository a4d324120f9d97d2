"""Google sign-in against a local OpenID provider: the full flow, and every way it must fail."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from aihub.auth.identity.oauth import COOKIE
from aihub.config import Settings
from aihub.models import User
from tests.auth.conftest import PASSWORD, assert_error, login, signed_up
from tests.auth.identity.fake_oidc import CLIENT_ID, FakeOidc, GoogleUser
from tests.auth.identity.helpers import (
    REDIRECT,
    Env,
    authorize,
    callback,
    close_env,
    exchange,
    flow_cookie,
    google_sign_in,
    landing,
    oauth_settings,
    open_env,
    query_of,
    start,
    user_by_email,
    user_row,
)
from tests.conftest import free_port


async def test_first_sign_in_creates_the_user_then_signs_in_again(env: Env) -> None:
    env.google.user = GoogleUser(sub="g-100", email="New.Person@Gmail.Example", email_verified=True, name="New P")
    provider_url, cookie = await start(env)
    # The authorization request: our callback, code flow, PKCE S256, state and nonce.
    sent = query_of(provider_url)
    assert provider_url.startswith(env.google.url + "/authorize?")
    assert sent["redirect_uri"] == "http://127.0.0.1:3000/api/auth/oauth/google/callback"
    assert sent["client_id"] == CLIENT_ID and sent["response_type"] == "code"
    assert sent["code_challenge_method"] == "S256" and len(sent["code_challenge"]) == 43
    assert sent["scope"] == "openid email profile"
    assert len(sent["state"]) >= 43 and len(sent["nonce"]) >= 43
    back = landing(await callback(env, await authorize(provider_url), cookie))
    assert set(back) == {"code"}
    # The token request carried the PKCE verifier and our client credentials.
    token_request = env.google.token_requests[-1]
    assert token_request["code_verifier"] and token_request["client_secret"]

    response = await exchange(env, back["code"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tokenType"] == "Bearer" and body["accessToken"] and body["refreshToken"]
    assert body["user"]["email"] == "new.person@gmail.example"
    assert body["user"]["verified"] is True and body["user"]["roles"] == ["user"]
    assert body["user"]["displayName"] == "New P"
    row = await user_row(env.rt, body["user"]["id"])
    assert row.google_id == "g-100" and row.password_hash is None
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    balance = await env.core.get("/api/credits/balance", headers=headers)
    assert balance.status_code == 200 and balance.json()["balance"] == 0  # a credit account exists
    refreshed = await env.auth.post("/refresh", json={"refreshToken": body["refreshToken"]})
    assert refreshed.status_code == 200

    # The one-time code works once.
    assert_error(await exchange(env, back["code"]), 400, "OAUTH_CODE_INVALID")
    # The same Google account signs in to the same user again.
    again = await exchange(env, (await google_sign_in(env))["code"])
    assert again.status_code == 200 and again.json()["user"]["id"] == body["user"]["id"]


async def test_start_sets_a_short_lived_httponly_lax_cookie(env: Env) -> None:
    response = await env.auth.get("/oauth/google/start", params={"redirectUri": REDIRECT})
    assert response.status_code == 302
    header = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes
    assert "samesite=lax" in header.lower() and "max-age=600" in header.lower()
    assert "path=/api/auth/oauth/google" in header.lower()
    assert "secure" not in attributes  # AIHUB_PUBLIC_URL is http here


async def test_https_public_url_makes_the_cookie_secure(settings: Settings, google: FakeOidc) -> None:
    env = await open_env(oauth_settings(settings, google, public_url="https://aihub.example/"), google)
    try:
        response = await env.auth.get("/oauth/google/start", params={"redirectUri": REDIRECT})
        assert response.status_code == 302
        assert query_of(response.headers["location"])["redirect_uri"] == (
            "https://aihub.example/api/auth/oauth/google/callback"
        )
        header = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
        assert "secure" in {part.strip().lower() for part in header.split(";")}
    finally:
        await close_env(env)


async def test_forged_state_is_refused(env: Env) -> None:
    provider_url, cookie = await start(env)
    parts = urlsplit(await authorize(provider_url))
    code = query_of(parts.geturl())["code"]
    forged = f"/api/auth/oauth/google/callback?code={code}&state=made-up-state"
    assert_error(await callback(env, forged, cookie), 400, "OAUTH_STATE_INVALID")
    no_state = f"/api/auth/oauth/google/callback?code={code}"
    assert_error(await callback(env, no_state, cookie), 400, "OAUTH_STATE_INVALID")


async def test_state_from_another_browser_is_refused(env: Env) -> None:
    provider_url, cookie = await start(env)
    _, other_browsers_cookie = await start(env)  # another browser started its own flow
    location = await authorize(provider_url)
    assert_error(await callback(env, location, None), 400, "OAUTH_STATE_INVALID")  # no cookie
    assert_error(await callback(env, location, other_browsers_cookie), 400, "OAUTH_STATE_INVALID")
    assert_error(await callback(env, location, "guessed-" + cookie[8:]), 400, "OAUTH_STATE_INVALID")
    # Those attempts did not use the flow up: the browser that started it still finishes it.
    back = landing(await callback(env, location, cookie))
    assert (await exchange(env, back["code"])).status_code == 200
    # A replayed callback (same state, same code) is refused: the state worked once.
    assert_error(await callback(env, location, cookie), 400, "OAUTH_STATE_INVALID")


async def _failed_sign_in(env: Env) -> str:
    back = await google_sign_in(env)
    assert set(back) == {"error"}, back
    return back["error"]


async def test_wrong_nonce_is_refused(env: Env) -> None:
    env.google.id_token_changes = {"nonce": "not-the-nonce-we-sent"}
    assert await _failed_sign_in(env) == "INVALID_ID_TOKEN"
    env.google.id_token_changes = {"nonce": None}  # no nonce at all
    assert await _failed_sign_in(env) == "INVALID_ID_TOKEN"
    assert await user_by_email(env.rt, env.google.user.email) is None  # nobody was created


async def test_token_signed_by_another_key_is_refused(
    env: Env, provider_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    env.google.sign_with = provider_keys[1]  # same kid as the published key, other key
    assert await _failed_sign_in(env) == "INVALID_ID_TOKEN"
    env.google.signing_kid = "unpublished-key"  # a kid the JWKS does not have (refetched, still absent)
    assert await _failed_sign_in(env) == "INVALID_ID_TOKEN"
    assert await user_by_email(env.rt, env.google.user.email) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "someone-elses-client"},
        {"aud": ["someone-elses-client"], "azp": CLIENT_ID},
        {"iss": "https://evil.example"},
        {"exp": int(time.time()) - 3600},
        {"azp": "someone-elses-client"},
        {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"},
    ],
    ids=["audience", "audience-list", "issuer", "expired", "azp", "at_hash"],
)
async def test_id_token_claims_are_checked(env: Env, changes: dict[str, object]) -> None:
    env.google.id_token_changes = changes
    assert await _failed_sign_in(env) == "INVALID_ID_TOKEN"


async def test_unverified_google_email_cannot_take_over_an_existing_account(env: Env) -> None:
    owner = await signed_up(env.auth, "owner@gmail.example")
    env.google.user = GoogleUser(sub="g-attacker", email="Owner@gmail.example", email_verified=False)
    assert await _failed_sign_in(env) == "EMAIL_NOT_VERIFIED"
    assert (await user_row(env.rt, owner.user_id)).google_id is None
    # Google vouching for the address links the account (and verifies it).
    env.google.user = GoogleUser(sub="g-owner", email="owner@gmail.example", email_verified=True)
    response = await exchange(env, (await google_sign_in(env))["code"])
    assert response.status_code == 200
    assert response.json()["user"]["id"] == owner.user_id and response.json()["user"]["verified"] is True
    assert (await user_row(env.rt, owner.user_id)).google_id == "g-owner"
    # The password keeps working; a second Google account cannot claim the same email.
    await login(env.auth, "owner@gmail.example", PASSWORD)
    env.google.user = GoogleUser(sub="g-other", email="owner@gmail.example", email_verified=True)
    assert await _failed_sign_in(env) == "GOOGLE_ACCOUNT_MISMATCH"


async def test_new_user_with_unverified_google_email_is_unverified(env: Env) -> None:
    env.google.user = GoogleUser(sub="g-unv", email="fresh@example.org", email_verified=False)
    response = await exchange(env, (await google_sign_in(env))["code"])
    assert response.status_code == 200
    assert response.json()["user"]["verified"] is False


async def test_required_verified_email_refuses_an_unverified_google_user(settings: Settings, google: FakeOidc) -> None:
    env = await open_env(oauth_settings(settings, google, require_verified_email=True), google)
    try:
        env.google.user = GoogleUser(sub="g-unv2", email="fresh2@example.org", email_verified=False)
        assert await _failed_sign_in(env) == "EMAIL_NOT_VERIFIED"
        env.google.user = GoogleUser(sub="g-v2", email="fresh3@example.org", email_verified=True)
        assert (await exchange(env, (await google_sign_in(env))["code"])).status_code == 200
    finally:
        await close_env(env)


async def test_suspended_user_cannot_sign_in_with_google(env: Env) -> None:
    env.google.user = GoogleUser(sub="g-s", email="sus@example.org")
    body = (await exchange(env, (await google_sign_in(env))["code"])).json()
    tx = env.rt.tx()
    try:
        user = await tx.session.get(User, uuid.UUID(body["user"]["id"]))
        assert user is not None
        user.status = "suspended"
        await tx.commit()
    finally:
        await tx.close()
    assert await _failed_sign_in(env) == "ACCOUNT_SUSPENDED"


async def test_provider_refusal_and_failures_go_back_as_errors(env: Env) -> None:
    provider_url, cookie = await start(env)
    state = query_of(provider_url)["state"]
    denied = f"/api/auth/oauth/google/callback?error=access_denied&state={state}"
    assert landing(await callback(env, denied, cookie)) == {"error": "OAUTH_DENIED"}
    # The token endpoint fails (or refuses a verifier): the client hears OAUTH_PROVIDER_ERROR.
    env.google.token_status = 500
    assert await _failed_sign_in(env) == "OAUTH_PROVIDER_ERROR"
    env.google.token_status = 200
    provider_url, cookie = await start(env)
    location = await authorize(provider_url)
    env.google.codes[query_of(location)["code"]]["challenge"] = "another-challenge"  # PKCE mismatch
    assert landing(await callback(env, location, cookie)) == {"error": "OAUTH_PROVIDER_ERROR"}


async def test_start_refuses_unknown_redirect_uris_and_bad_input(env: Env) -> None:
    for uri in ("http://evil.example/cb", REDIRECT + "/more", REDIRECT.upper(), "javascript:alert(1)"):
        response = await env.auth.get("/oauth/google/start", params={"redirectUri": uri})
        assert_error(response, 400, "INVALID_REDIRECT_URI")
    assert_error(await env.auth.get("/oauth/google/start"), 422, "VALIDATION_ERROR")
    long_uri = "http://app.example/" + "x" * 3000
    assert_error(await env.auth.get("/oauth/google/start", params={"redirectUri": long_uri}), 422, "VALIDATION_ERROR")
    # The other allowed URI works as well.
    assert (
        await env.auth.get("/oauth/google/start", params={"redirectUri": "http://other.example/cb"})
    ).status_code == 302


async def test_exchange_bad_input(env: Env) -> None:
    assert_error(await exchange(env, "never-issued"), 400, "OAUTH_CODE_INVALID")
    assert_error(await env.auth.post("/oauth/exchange", json={}), 422, "VALIDATION_ERROR")
    assert_error(await env.auth.post("/oauth/exchange", json={"code": "x" * 300}), 422, "VALIDATION_ERROR")
    assert_error(await env.auth.post("/oauth/exchange", json={"code": "a", "extra": 1}), 422, "VALIDATION_ERROR")
    bad_json = await env.auth.post("/oauth/exchange", content=b"{", headers={"Content-Type": "application/json"})
    assert_error(bad_json, 400, "INVALID_JSON")


async def test_one_time_code_is_spent_once_under_concurrency(env: Env) -> None:
    code = (await google_sign_in(env))["code"]
    answers = await asyncio.gather(*(exchange(env, code) for _ in range(20)))
    assert sorted(r.status_code for r in answers) == [200] + [400] * 19


async def test_not_configured_and_provider_down(settings: Settings, google: FakeOidc) -> None:
    bare = await open_env(settings, google)
    try:
        assert_error(
            await bare.auth.get("/oauth/google/start", params={"redirectUri": REDIRECT}), 503, "OAUTH_NOT_CONFIGURED"
        )
    finally:
        await close_env(bare)
    down = await open_env(
        oauth_settings(settings, google, oidc_google_issuer=f"http://127.0.0.1:{free_port()}"), google
    )
    try:
        response = await down.auth.get("/oauth/google/start", params={"redirectUri": REDIRECT})
        assert_error(response, 503, "OAUTH_PROVIDER_UNAVAILABLE")
    finally:
        await close_env(down)


async def test_link_google_to_a_password_account_while_signed_in(env: Env) -> None:
    me = await signed_up(env.auth, "linker@example.com")
    assert_error(await env.auth.get("/oauth/google/link/start", params={"redirectUri": REDIRECT}), 401, "UNAUTHORIZED")
    response = await env.auth.get("/oauth/google/link/start", params={"redirectUri": REDIRECT}, headers=me.headers)
    assert response.status_code == 200, response.text
    url, cookie = response.json()["authorizationUrl"], flow_cookie(response)
    env.google.user = GoogleUser(sub="g-linker", email="linker.other@gmail.example", email_verified=True)
    assert landing(await callback(env, await authorize(url), cookie)) == {"linked": "google"}
    assert (await user_row(env.rt, me.user_id)).google_id == "g-linker"
    # Now Google signs in to that same account, although its email differs.
    signed = await exchange(env, (await google_sign_in(env))["code"])
    assert signed.status_code == 200 and signed.json()["user"]["id"] == me.user_id

    # A Google account linked to someone cannot be linked to another user.
    other = await signed_up(env.auth, "second@example.com")
    response = await env.auth.get("/oauth/google/link/start", params={"redirectUri": REDIRECT}, headers=other.headers)
    back = landing(await callback(env, await authorize(response.json()["authorizationUrl"]), flow_cookie(response)))
    assert back == {"error": "GOOGLE_ACCOUNT_IN_USE"}
    assert (await user_row(env.rt, other.user_id)).google_id is None


async def test_google_user_sets_a_password_later(env: Env) -> None:
    env.google.user = GoogleUser(sub="g-pw", email="pw@gmail.example")
    body = (await exchange(env, (await google_sign_in(env))["code"])).json()
    headers = {"Authorization": f"Bearer {body['accessToken']}"}
    assert_error(
        await env.auth.post("/login", json={"email": "pw@gmail.example", "password": "x" * 10}),
        401,
        "INVALID_CREDENTIALS",
    )  # no password yet
    response = await env.core.patch("/api/users/me", json={"password": "a-new-password-1"}, headers=headers)
    assert response.status_code == 200, response.text
    await login(env.auth, "pw@gmail.example", "a-new-password-1")
    # From now on changing it needs the current one, like any account.
    response = await env.core.patch("/api/users/me", json={"password": "another-one-22"}, headers=headers)
    assert_error(response, 403, "INVALID_CREDENTIALS")


async def test_callback_and_exchange_through_http_methods(env: Env) -> None:
    assert (await env.auth.post("/oauth/google/start")).status_code == 405
    assert (await env.auth.get("/oauth/exchange")).status_code == 405


async def test_exchange_answers_the_login_body(env: Env) -> None:
    session = await signed_up(env.auth, "shape@gmail.example")
    env.google.user = GoogleUser(sub="g-shape", email="shape@gmail.example", email_verified=True)
    body = (await exchange(env, (await google_sign_in(env))["code"])).json()
    assert set(body) == set(session.body)
    assert set(body["user"]) == set(session.body["user"])
