"""How a request presents an API key: one parser for the gateway and core alike.

A key is sent as ``X-API-Key: ahk_…`` or ``Authorization: Bearer ahk_…``; ``X-API-Key`` wins
when both are there. Whether the key is any good is the caller's business (the gateway asks
core; core looks it up): this only finds it, so both services agree on what a key request is.
"""

from __future__ import annotations

from aihub.kit.errors import AppError

KEY_PREFIX = "ahk_"


# A key's refusals: core answers them and the gateway repeats them, with the same codes.
class InvalidApiKey(AppError):
    status_code, code, message = 401, "INVALID_API_KEY", "The API key is unknown or revoked"


class KeyExpired(AppError):
    status_code, code, message = 401, "KEY_EXPIRED", "The API key has expired"


class KeyIpNotAllowed(AppError):
    status_code, code, message = 403, "KEY_IP_NOT_ALLOWED", "This API key may not be used from this address"


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX)


class MalformedAuthorization(ValueError):
    """An ``Authorization`` header that is not ``Bearer <credential>``."""


def bearer(authorization: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <credential>`` (any case of the scheme), None
    without the header; :class:`MalformedAuthorization` for any other header. The one parser of
    the header: each service answers a malformed one with its own (pinned) code."""
    if authorization is None:
        return None
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise MalformedAuthorization
    return credential


def bearer_credential(authorization: str | None) -> str | None:
    """The bearer credential, or None for a missing or malformed header (looking for a key)."""
    try:
        return bearer(authorization)
    except MalformedAuthorization:
        return None


def presented_key(x_api_key: str | None, bearer: str | None) -> str | None:
    """The API key of a request: the ``X-API-Key`` header (even empty: then an invalid key, not
    an anonymous call), else a bearer credential that looks like a key; None for a JWT caller."""
    if x_api_key is not None:
        return x_api_key.strip()
    if bearer is not None and looks_like_key(bearer):
        return bearer
    return None
