"""Email verification and password reset through a real SMTP sink (tokens read from the mail)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import update

from aihub.auth.identity.emails import RESET_PAGE, VERIFY_PAGE
from aihub.config import Settings
from aihub.kit.jobs import QUEUE, jobs_of
from aihub.models import EmailToken
from tests.auth.conftest import PASSWORD, assert_error, login, register, signed_up
from tests.auth.identity.fake_oidc import FakeOidc
from tests.auth.identity.helpers import Env, close_env, open_env
from tests.smtp_sink import SmtpSink

PUBLIC = "https://aihub.example"
NEW_PASSWORD = "a brand new password"
_TOKEN = re.compile(r"\?token=([A-Za-z0-9_\-]+)")


async def open_mail_env(settings: Settings, sink: SmtpSink, google: FakeOidc, **extra: Any) -> Env:
    values = {**settings.model_dump(), "smtp_url": sink.url, "public_url": PUBLIC, **extra}
    env = await open_env(Settings(**values), google)
    await jobs_of(env.rt).start()  # this process consumes the job queue (Redis stream or in-process)
    return env


async def settle(env: Env) -> None:
    """Wait for the queued jobs to finish (acknowledged, on Redis), then close: stopping the
    stream consumer in the middle of a job has been seen to stall taskiq's shutdown."""
    url = env.rt.settings.redis_url
    if url is None:
        await jobs_of(env.rt).wait_idle()
    else:
        client = Redis.from_url(url)
        try:
            for _ in range(400):
                groups = {g["name"]: g for g in await client.xinfo_groups(QUEUE)}
                group = groups.get(b"aihub") or groups.get("aihub")
                if group is None or (group["pending"] == 0 and not group.get("lag")):
                    break
                await asyncio.sleep(0.025)
        finally:
            await client.aclose()
    await close_env(env)


@pytest.fixture
async def menv(settings: Settings, smtp_sink: SmtpSink, google: FakeOidc) -> AsyncIterator[Env]:
    env = await open_mail_env(settings, smtp_sink, google)
    yield env
    await settle(env)


async def mails(sink: SmtpSink, count: int) -> list[EmailMessage]:
    # The sink waits with a blocking sleep: off the loop, so the sending job can run meanwhile.
    return await asyncio.to_thread(sink.wait_for, count)


def token_in(message: EmailMessage, page: str) -> str:
    text = SmtpSink.text_of(message)
    match = _TOKEN.search(text)
    assert match, text
    token = match.group(1)
    assert f"{PUBLIC}{page}?token={token}" in text  # the link is built on AIHUB_PUBLIC_URL
    assert text.count(token) >= 2  # and the bare token is in the text too
    return token


async def expire_tokens(env: Env) -> None:
    tx = env.rt.tx()
    try:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
        await tx.session.execute(update(EmailToken).values(expires_at=past))
        await tx.commit()
    finally:
        await tx.close()


# ---------------------------------------------------------------- verification


async def test_registration_mails_a_verification_link_that_verifies_once(menv: Env, smtp_sink: SmtpSink) -> None:
    user = await register(menv.auth, "Verify.Me@Example.com")
    assert user["verified"] is False
    [message] = await mails(smtp_sink, 1)
    assert message["To"] == "verify.me@example.com"
    assert message["Subject"] == "Verify your email address"
    token = token_in(message, VERIFY_PAGE)
    assert len(token) >= 43  # 256 bits, base64url
    response = await menv.auth.post("/verify-email", json={"token": token})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["verified"] is True
    session = await login(menv.auth, "verify.me@example.com")
    assert session.body["user"]["verified"] is True
    assert_error(await menv.auth.post("/verify-email", json={"token": token}), 400, "VERIFICATION_TOKEN_INVALID")
    # Verified now: no further email is requested.
    response = await menv.auth.post("/verify-email/request", headers=session.headers)
    assert_error(response, 409, "EMAIL_ALREADY_VERIFIED")


async def test_only_the_hash_of_the_token_is_stored(menv: Env, smtp_sink: SmtpSink) -> None:
    await register(menv.auth, "hash@example.com")
    token = token_in((await mails(smtp_sink, 1))[0], VERIFY_PAGE)
    tx = menv.rt.tx()
    try:
        from sqlalchemy import select

        stored = (await tx.session.execute(select(EmailToken.token_hash))).scalars().all()
    finally:
        await tx.close()
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64


async def test_verification_on_request_and_its_limits(
    settings: Settings, smtp_sink: SmtpSink, google: FakeOidc
) -> None:
    env = await open_mail_env(settings, smtp_sink, google, identity_email_limit=2)
    try:
        session = await signed_up(env.auth, "again@example.com")
        await mails(smtp_sink, 1)  # the registration's
        assert_error(await env.auth.post("/verify-email/request"), 401, "UNAUTHORIZED")
        bad = {"Authorization": "Bearer not-a-jwt"}
        assert_error(await env.auth.post("/verify-email/request", headers=bad), 401, "INVALID_TOKEN")
        for _ in range(2):
            response = await env.auth.post("/verify-email/request", headers=session.headers)
            assert response.status_code == 202, response.text
            assert response.json()["status"] == "accepted"
        limited = await env.auth.post("/verify-email/request", headers=session.headers)
        assert_error(limited, 429, "RATE_LIMIT_EXCEEDED")
        assert int(limited.headers["Retry-After"]) >= 1
        messages = await mails(smtp_sink, 3)
        tokens = [token_in(m, VERIFY_PAGE) for m in messages]
        assert len(set(tokens)) == 3  # every email its own token
        # Any of them verifies; an expired one does not.
        response = await env.auth.post("/verify-email", json={"token": tokens[2]})
        assert response.status_code == 200
        await expire_tokens(env)
        assert_error(await env.auth.post("/verify-email", json={"token": tokens[1]}), 400, "VERIFICATION_TOKEN_EXPIRED")
    finally:
        await settle(env)


async def test_a_verification_token_is_void_after_an_email_change(
    menv: Env, smtp_sink: SmtpSink, runtime_admin_headers: dict[str, str]
) -> None:
    user = await register(menv.auth, "before@example.com")
    token = token_in((await mails(smtp_sink, 1))[0], VERIFY_PAGE)
    changed = await menv.core.patch(
        f"/api/users/{user['id']}", json={"email": "after@example.com"}, headers=runtime_admin_headers
    )
    assert changed.status_code == 200, changed.text
    assert_error(await menv.auth.post("/verify-email", json={"token": token}), 400, "VERIFICATION_TOKEN_INVALID")


@pytest.fixture
async def runtime_admin_headers(menv: Env) -> dict[str, str]:
    from tests.conftest import create_user

    admin = await create_user(menv.rt, roles=["admin"])
    return admin.headers


async def test_verify_email_bad_input(menv: Env) -> None:
    assert_error(await menv.auth.post("/verify-email", json={"token": "nope"}), 400, "VERIFICATION_TOKEN_INVALID")
    assert_error(await menv.auth.post("/verify-email", json={}), 422, "VALIDATION_ERROR")
    assert_error(await menv.auth.post("/verify-email", json={"token": ""}), 422, "VALIDATION_ERROR")
    assert_error(await menv.auth.post("/verify-email", json={"token": "x" * 300}), 422, "VALIDATION_ERROR")
    assert_error(await menv.auth.post("/verify-email", json={"token": 5}), 422, "VALIDATION_ERROR")
    raw = await menv.auth.post("/verify-email", content=b"token", headers={"Content-Type": "application/json"})
    assert_error(raw, 400, "INVALID_JSON")


async def test_required_verification_refuses_login_until_verified(
    settings: Settings, smtp_sink: SmtpSink, google: FakeOidc
) -> None:
    env = await open_mail_env(settings, smtp_sink, google, require_verified_email=True)
    try:
        await register(env.auth, "strict@example.com")
        await mails(smtp_sink, 1)
        refused = await env.auth.post("/login", json={"email": "strict@example.com", "password": PASSWORD})
        assert_error(refused, 403, "EMAIL_NOT_VERIFIED")
        # The refused sign-in mails a fresh link (the user cannot sign in to ask for one) …
        messages = await mails(smtp_sink, 2)
        # … but a wrong password reveals nothing and sends nothing.
        wrong = await env.auth.post("/login", json={"email": "strict@example.com", "password": "wrong-password"})
        assert_error(wrong, 401, "INVALID_CREDENTIALS")
        response = await env.auth.post("/verify-email", json={"token": token_in(messages[1], VERIFY_PAGE)})
        assert response.status_code == 200
        await login(env.auth, "strict@example.com")
    finally:
        await settle(env)


async def test_email_delivery_is_retried(menv: Env, smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse = 1  # the first delivery gets a temporary failure
    await register(menv.auth, "retry@example.com")
    [message] = await mails(smtp_sink, 1)
    assert message["To"] == "retry@example.com"


# ---------------------------------------------------------------- password reset


async def _request_reset(env: Env, email: str) -> httpx.Response:
    return await env.auth.post("/password-reset/request", json={"email": email})


async def test_reset_through_the_mail_revokes_every_session(menv: Env, smtp_sink: SmtpSink) -> None:
    first = await signed_up(menv.auth, "forgot@example.com")
    second = await login(menv.auth, "forgot@example.com")
    await mails(smtp_sink, 1)  # the registration's verification email
    # The access tokens are from an earlier second than the reset (JWT times are whole seconds).
    iat = menv.rt.codec.verify(second.access).iat
    while int(time.time()) <= iat:
        await asyncio.sleep(0.05)
    response = await _request_reset(menv, "Forgot@Example.com")
    assert response.status_code == 202, response.text
    message = (await mails(smtp_sink, 2))[1]
    assert message["To"] == "forgot@example.com" and message["Subject"] == "Reset your password"
    token = token_in(message, RESET_PAGE)
    response = await menv.auth.post("/password-reset", json={"token": token, "password": NEW_PASSWORD})
    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == "forgot@example.com"
    # Every refresh family is revoked, and the access tokens issued before are refused.
    for session in (first, second):
        refreshed = await menv.auth.post("/refresh", json={"refreshToken": session.refresh})
        assert refreshed.status_code == 401, refreshed.text
        assert_error(await menv.auth.get("/me", headers=session.headers), 401, "TOKEN_REVOKED")
        assert_error(await menv.core.get("/api/users/me", headers=session.headers), 401, "TOKEN_REVOKED")
    # The old password is gone, the new one signs in (and its tokens work).
    old = await menv.auth.post("/login", json={"email": "forgot@example.com", "password": PASSWORD})
    assert_error(old, 401, "INVALID_CREDENTIALS")
    fresh = await login(menv.auth, "forgot@example.com", NEW_PASSWORD)
    assert (await menv.auth.get("/me", headers=fresh.headers)).status_code == 200
    assert fresh.body["user"]["verified"] is True  # the link reached the address
    # The token worked once.
    again = await menv.auth.post("/password-reset", json={"token": token, "password": "yet another password"})
    assert_error(again, 400, "RESET_TOKEN_INVALID")


async def test_reset_answers_alike_for_known_and_unknown_emails(menv: Env, smtp_sink: SmtpSink) -> None:
    await register(menv.auth, "known@example.com")
    await mails(smtp_sink, 1)
    unknown = await _request_reset(menv, "unknown@example.com")
    known = await _request_reset(menv, "known@example.com")
    assert unknown.status_code == known.status_code == 202
    assert unknown.content == known.content
    assert unknown.headers.keys() == known.headers.keys()
    messages = await mails(smtp_sink, 2)
    await asyncio.sleep(0.5)  # time for a (wrong) email to the unknown address to arrive too
    assert len(smtp_sink.messages) == 2
    assert [m["To"] for m in messages] == ["known@example.com", "known@example.com"]


async def test_reset_is_limited_per_email_whether_known_or_not(
    settings: Settings, smtp_sink: SmtpSink, google: FakeOidc
) -> None:
    env = await open_mail_env(settings, smtp_sink, google, identity_email_limit=2)
    try:
        await register(env.auth, "limited@example.com")
        for email in ("limited@example.com", "nobody@example.com"):
            for _ in range(2):
                assert (await _request_reset(env, email)).status_code == 202
            limited = await _request_reset(env, email.upper())  # the same address in other case
            assert_error(limited, 429, "RATE_LIMIT_EXCEEDED")
            assert "Retry-After" in limited.headers
        assert (await _request_reset(env, "third@example.com")).status_code == 202  # others are not held up
    finally:
        await settle(env)


async def test_reset_token_expires_and_new_reset_spends_the_others(menv: Env, smtp_sink: SmtpSink) -> None:
    await signed_up(menv.auth, "twice@example.com")
    await mails(smtp_sink, 1)
    for _ in range(2):
        assert (await _request_reset(menv, "twice@example.com")).status_code == 202
    messages = await mails(smtp_sink, 3)
    first, second = (token_in(m, RESET_PAGE) for m in messages[1:])
    response = await menv.auth.post("/password-reset", json={"token": second, "password": NEW_PASSWORD})
    assert response.status_code == 200
    # The spare link died with the reset.
    spare = await menv.auth.post("/password-reset", json={"token": first, "password": "some other password"})
    assert_error(spare, 400, "RESET_TOKEN_INVALID")
    assert (await _request_reset(menv, "twice@example.com")).status_code == 202
    late = token_in((await mails(smtp_sink, 4))[3], RESET_PAGE)
    await expire_tokens(menv)
    response = await menv.auth.post("/password-reset", json={"token": late, "password": "some other password"})
    assert_error(response, 400, "RESET_TOKEN_EXPIRED")


async def test_reset_token_is_spent_once_under_concurrency(menv: Env, smtp_sink: SmtpSink) -> None:
    await register(menv.auth, "race@example.com")
    await mails(smtp_sink, 1)
    await _request_reset(menv, "race@example.com")
    token = token_in((await mails(smtp_sink, 2))[1], RESET_PAGE)
    answers = await asyncio.gather(
        *(
            menv.auth.post("/password-reset", json={"token": token, "password": f"parallel password {i}"})
            for i in range(10)
        )
    )
    assert sorted(r.status_code for r in answers) == [200] + [400] * 9


async def test_reset_bad_input(menv: Env) -> None:
    post = menv.auth.post
    assert_error(
        await post("/password-reset", json={"token": "nope", "password": NEW_PASSWORD}), 400, "RESET_TOKEN_INVALID"
    )
    assert_error(await post("/password-reset", json={"token": "nope", "password": "short"}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset", json={"password": NEW_PASSWORD}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset", json={"token": "t", "password": "p" * 300}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset/request", json={"email": "not-an-email"}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset/request", json={}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset/request", json={"email": "a@b.co", "x": 1}), 422, "VALIDATION_ERROR")
    assert_error(await post("/password-reset/request", json={"email": "a" * 400 + "@b.co"}), 422, "VALIDATION_ERROR")
    raw = await post("/password-reset/request", content=b"[", headers={"Content-Type": "application/json"})
    assert_error(raw, 400, "INVALID_JSON")
