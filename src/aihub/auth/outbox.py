"""The identity emails' queue side: how many a key may ask for, and the job that mails a token.

Registration and a login refused for an unverified address (auth) queue a verification email
as the identity endpoints do (auth/identity/emails.py, which also runs the job): this module is
what both use, so auth does not import the identity domain that builds on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from aihub.kit.db import Tx
from aihub.kit.errors import AppError, ServiceUnavailable
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from aihub.kit.store import StoreUnavailable, over_limit

log = structlog.get_logger("aihub.identity")

EMAIL_JOB = "identity.email_token"
Purpose = Literal["verify", "reset"]


class TooManyEmailRequests(AppError):
    status_code, code, message = 429, "RATE_LIMIT_EXCEEDED", "Too many requests, try again later"


class QueueUnavailable(ServiceUnavailable):
    code, message = "JOB_QUEUE_UNAVAILABLE", "Emails cannot be queued right now, try again later"


async def count(runtime: Runtime, key: str) -> None:
    """At most ``identity_email_limit`` requests per key and window (per account or per email;
    the gateway limits per client address). A store outage fails open, like the login lockout."""
    settings = runtime.settings
    try:
        retry = await over_limit(
            runtime.store,
            key,
            limit=settings.identity_email_limit,
            window_seconds=settings.identity_email_window_seconds,
        )
    except StoreUnavailable:
        log.warning("identity_limit_unavailable")
        return
    if retry is None:
        return
    raise TooManyEmailRequests(headers={"Retry-After": str(retry)}, details={"retryAfterSeconds": retry})


@dataclass(frozen=True, slots=True)
class EmailRequest:
    """What the email job is asked: a verification email to a user, or a reset to an address."""

    purpose: Purpose
    user_id: str | None = None  # verify
    email: str | None = None  # reset

    def payload(self) -> dict[str, str]:
        """The job's JSON payload (its keys as queued since the job existed)."""
        if self.purpose == "verify":
            assert self.user_id is not None
            return {"purpose": "verify", "userId": self.user_id}
        assert self.email is not None
        return {"purpose": "reset", "email": self.email}

    @classmethod
    def of(cls, payload: dict[str, Any]) -> EmailRequest:
        if payload.get("purpose") == "verify":
            return cls("verify", user_id=str(payload["userId"]))
        return cls("reset", email=str(payload["email"]))


async def enqueue(runtime: Runtime, request: EmailRequest) -> None:
    try:
        await jobs_of(runtime).enqueue(EMAIL_JOB, request.payload())
    except Exception as exc:  # the broker is down: say so instead of promising an email
        log.exception("identity_enqueue_failed", purpose=request.purpose)
        raise QueueUnavailable from exc


def send_verification_after_commit(tx: Tx, runtime: Runtime, user_id: uuid.UUID, *, limited: bool = False) -> None:
    """Registration (and a login refused for an unverified email, ``limited`` by the per-account
    count): the email goes out once the transaction committed, never for a rolled-back one."""

    async def send() -> None:
        try:
            if limited:
                await count(runtime, f"identity:verify:{user_id}")
            await enqueue(runtime, EmailRequest("verify", user_id=str(user_id)))
        except (QueueUnavailable, TooManyEmailRequests):
            pass  # the account stands; the user can ask for the email again

    tx.after_commit(send)
