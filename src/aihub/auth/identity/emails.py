"""Email verification and password reset: one-time tokens that travel by email.

* A token is 256 random bits, mailed once and stored as its SHA-256 only; verification
  tokens live 24 h, reset tokens 1 h; spending one is a conditional UPDATE (single use).
* The token is made by the background job that sends the email, after the request's commit:
  the secret never sits in the job queue, and a slow or dead mail server holds no request.
* A reset request does the same work whether the email is known or not (count it, queue a
  job, answer 202 with one body); only the job looks the address up. The answer and its
  timing therefore say nothing about which addresses have accounts.
* A reset sets the new password, voids the user's other reset tokens, revokes every refresh
  family, their access tokens and every Sora session (``auth.end_all_sessions``, as
  ``aihub admin set-password`` does) and sets ``sessions_revoked_at``, so core refuses the
  user's access tokens issued before it as well.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import uuid
from typing import Any
from urllib.parse import quote

import structlog

from aihub.auth import outbox
from aihub.auth import service as auth
from aihub.auth.identity import repository as repo
from aihub.auth.identity.schemas import AcceptedOut
from aihub.auth.schemas import UserEnvelope
from aihub.core.audit import service as audit
from aihub.core.sessions import lockout
from aihub.core.users import repository as users_repo
from aihub.core.users import service as users
from aihub.kit.db import Tx, utcnow
from aihub.kit.email import Email, EmailDeliveryError, build_mailer
from aihub.kit.errors import AccountSuspended, AppError, Conflict
from aihub.kit.jobs import job
from aihub.kit.passwords import hash_password
from aihub.kit.runtime import Runtime
from aihub.models import User

log = structlog.get_logger("aihub.identity")

TOKEN_BYTES = 32  # 256 bits
VERIFY_TTL = dt.timedelta(hours=24)
RESET_TTL = dt.timedelta(hours=1)
SEND_ATTEMPTS = 3
SEND_BACKOFF_SECONDS = 1.0
# The console's pages the links open; they POST the token to the API. The token rides in the
# fragment, which the browser never sends: it stays out of server and proxy logs and Referer.
VERIFY_PAGE = "/console/#/verify-email"
RESET_PAGE = "/console/#/reset-password"

ACCEPTED = AcceptedOut(message="If the address can receive it, an email is on its way")


class VerificationTokenInvalid(AppError):
    status_code, code = 400, "VERIFICATION_TOKEN_INVALID"
    message = "This verification link is not valid or was already used"


class VerificationTokenExpired(AppError):
    status_code, code, message = 400, "VERIFICATION_TOKEN_EXPIRED", "This verification link has expired"


class ResetTokenInvalid(AppError):
    status_code, code, message = 400, "RESET_TOKEN_INVALID", "This reset link is not valid or was already used"


class ResetTokenExpired(AppError):
    status_code, code, message = 400, "RESET_TOKEN_EXPIRED", "This reset link has expired"


class AlreadyVerified(Conflict):
    code, message = "EMAIL_ALREADY_VERIFIED", "This email address is already verified"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """SHA-256 suffices: the token is random, not a password a person chose."""
    return hashlib.sha256(token.encode()).hexdigest()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- verification


async def request_verification(tx: Tx, runtime: Runtime, user_id: uuid.UUID) -> AcceptedOut:
    user = await users.get_user(tx, user_id)
    if user.verified:
        raise AlreadyVerified
    await outbox.count(runtime, f"identity:verify:{user_id}")
    await outbox.enqueue(runtime, outbox.EmailRequest("verify", user_id=str(user_id)))
    return ACCEPTED


async def _spend(tx: Tx, token: str, purpose: outbox.Purpose) -> tuple[uuid.UUID, str]:
    invalid, expired = (
        (VerificationTokenInvalid, VerificationTokenExpired)
        if purpose == "verify"
        else (ResetTokenInvalid, ResetTokenExpired)
    )
    digest, now = hash_token(token), utcnow()
    spent = await repo.spend_token(tx.session, digest, purpose, now)
    if spent is not None:
        return spent
    row = await repo.find_token(tx.session, digest, purpose)
    if row is not None and row.used_at is None:
        raise expired
    raise invalid


async def verify_email(tx: Tx, token: str) -> UserEnvelope:
    user_id, email = await _spend(tx, token, "verify")
    user = await users_repo.get(tx.session, user_id, for_update=True)
    # A token proves the address it was sent to, nothing else: void after an email change.
    if user is None or user.status == "deleted" or user.email != email:
        raise VerificationTokenInvalid
    before = await users.read(tx, user.id)
    if not user.verified:
        user.verified = True
        user.updated_at = utcnow()
        await tx.session.flush()
    after = await users.read(tx, user.id)
    audit.record(
        tx,
        "user.verify_email",
        "user",
        user.id,
        before=before.snapshot(),
        after=after.snapshot(),
        actor=_actor(user.id),
    )
    return UserEnvelope(user=after)


# ---------------------------------------------------------------- password reset


async def request_reset(runtime: Runtime, email: str) -> AcceptedOut:
    """The same steps for every address: normalise, count, queue. No lookup happens here."""
    email = users.normalise_email(email)
    await outbox.count(runtime, "identity:reset:" + _digest(email))
    await outbox.enqueue(runtime, outbox.EmailRequest("reset", email=email))
    return ACCEPTED


async def reset_password(tx: Tx, runtime: Runtime, token: str, password: str) -> UserEnvelope:
    user_id, email = await _spend(tx, token, "reset")
    user = await users_repo.get(tx.session, user_id, for_update=True)
    if user is None or user.status == "deleted" or user.email != email:
        raise ResetTokenInvalid
    if user.status == "suspended":
        raise AccountSuspended
    before = await users.read(tx, user.id)
    now = utcnow()
    user.password_hash = await hash_password(password)
    user.verified = True  # the link reached this address: it is the user's
    # Core refuses the user's access tokens issued before this (``current_principal``).
    user.updated_at = user.sessions_revoked_at = now
    await repo.spend_user_tokens(tx.session, user.id, "reset", now)
    await tx.session.flush()
    # Refresh families, their access tokens (blacklisted), Sora sessions: the same as
    # `aihub admin set-password`.
    ended = await auth.end_all_sessions(tx, runtime, user.id)
    after = await users.read(tx, user.id)
    audit.record(
        tx,
        "user.password_reset",
        "user",
        user.id,
        before=before.snapshot(),
        after={**after.snapshot(), **ended},
        actor=_actor(user.id),
    )

    async def unlock() -> None:  # the new password opens the account at once, even if locked
        await lockout.forget_failures(runtime.store, email)

    tx.after_commit(unlock)
    return UserEnvelope(user=after)


def _actor(user_id: uuid.UUID) -> audit.Actor:
    return audit.Actor(id=str(user_id), type="user")


# ---------------------------------------------------------------- the job that mails


def _email(runtime: Runtime, purpose: outbox.Purpose, to: str, token: str) -> Email:
    base = runtime.settings.public_base_url
    if purpose == "verify":
        link = f"{base}{VERIFY_PAGE}?token={quote(token)}"
        return Email(
            to=to,
            subject="Verify your email address",
            text=(
                f"Hello,\n\nplease confirm that {to} is your address by opening this link within 24 hours:\n\n"
                f"{link}\n\nOr enter this verification code where you are asked for it:\n\n{token}\n\n"
                "If you did not create an aihub account, you can ignore this email.\n"
            ),
        )
    link = f"{base}{RESET_PAGE}?token={quote(token)}"
    return Email(
        to=to,
        subject="Reset your password",
        text=(
            "Hello,\n\nsomebody (hopefully you) asked to reset the password of your aihub account. "
            f"Choose a new one within the next hour here:\n\n{link}\n\n"
            f"Or enter this reset code where you are asked for it:\n\n{token}\n\n"
            "Resetting signs you out everywhere. If you did not ask for it, ignore this email: "
            "your password stays as it is.\n"
        ),
    )


async def _recipient(tx: Tx, request: outbox.EmailRequest) -> User | None:
    if request.user_id is not None:
        user = await users_repo.get(tx.session, uuid.UUID(request.user_id))
        return None if user is None or user.verified or user.status == "deleted" else user
    if request.email is None:
        return None
    user = await users_repo.by_email(tx.session, request.email)
    return None if user is None or user.status == "deleted" else user


async def _deliver(runtime: Runtime, email: Email) -> None:
    mailer = build_mailer(runtime.settings)
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            await mailer.send(email)
            return
        except EmailDeliveryError as exc:
            if attempt == SEND_ATTEMPTS:
                raise
            log.warning("identity_email_retry", attempt=attempt, error=str(exc))
            await asyncio.sleep(SEND_BACKOFF_SECONDS * attempt)


@job(outbox.EMAIL_JOB)
async def send_email_token(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Make the token, store its hash, commit, then mail it. Nothing is sent, and nothing is
    stored, for an unknown address or an already verified account."""
    request = outbox.EmailRequest.of(payload)
    purpose = request.purpose
    tx = runtime.tx()
    try:
        user = await _recipient(tx, request)
        if user is None:
            log.info("identity_email_skipped", purpose=purpose)
            return
        token = new_token()
        await repo.add_token(
            tx.session,
            user_id=user.id,
            purpose=purpose,
            token_hash=hash_token(token),
            email=user.email,
            now=utcnow(),
            ttl=VERIFY_TTL if purpose == "verify" else RESET_TTL,
        )
        audit.record(tx, "auth.email_token_sent", "user", user.id, after={"purpose": purpose}, actor=audit.SYSTEM)
        to = user.email
        await tx.commit()
    finally:
        await tx.close()
    await _deliver(runtime, _email(runtime, purpose, to, token))
