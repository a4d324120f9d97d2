"""The per-account lockout that every password check of an account shares.

Login and ``PATCH /api/users/me`` (a password change proves ``currentPassword``) count on the
same counter, so neither door can be used to guess while the other is locked.
"""

from __future__ import annotations

import hashlib

import structlog

from aihub.kit.errors import AppError
from aihub.kit.runtime import Runtime
from aihub.kit.store import Store, StoreUnavailable, over_limit

log = structlog.get_logger("aihub.auth")


class LoginLocked(AppError):
    status_code, code = 429, "TOO_MANY_LOGIN_ATTEMPTS"
    message = "Too many failed sign-in attempts for this account, try again later"
    keep_changes = True


def email_digest(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def failures_key(email: str) -> str:
    # Hashed so that the store holds no email addresses.
    return "login:failures:" + email_digest(email)


async def count_attempt(runtime: Runtime, email: str) -> None:
    """Count this attempt first, verify second: parallel guesses cannot all slip under the limit.

    Raises :class:`LoginLocked` once the account's attempts in the window pass the limit."""
    settings = runtime.settings
    if settings.login_max_failures == 0:
        return
    try:
        retry = await over_limit(
            runtime.store,
            failures_key(email),
            limit=settings.login_max_failures,
            window_seconds=settings.login_lockout_seconds,
        )
    except StoreUnavailable:
        # Fail open: a store outage must not lock every user out; argon2 still bounds guessing.
        log.warning("login_lockout_unavailable")
        return
    if retry is None:
        return
    raise LoginLocked(headers={"Retry-After": str(retry)}, details={"retryAfterSeconds": retry})


async def forget_failures(store: Store, email: str) -> None:
    """A correct password clears the count (the next typo does not start near the limit)."""
    try:
        await store.delete(failures_key(email))
    except StoreUnavailable:
        log.warning("login_lockout_unavailable")
