"""Who is calling: the JWT verified locally (signature, exp with leeway, aud, iss, typ).

Verification is cached in-process by the codec; revocation is not (the blacklist is read in
the same Redis round trip as the rate-limit decision, see ratelimit.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from aihub.kit.apikeys import MalformedAuthorization, bearer
from aihub.kit.errors import Unauthorized
from aihub.kit.jwt import Claims, TokenCodec, UnknownSigningKey, session_id


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: str
    jti: str
    claims: Claims
    sid: str | None = None  # the refresh family, blacklisted as a whole on refresh-token reuse
    api_key_id: str | None = None  # set when an API key authenticated the request (apikeys.py)
    expires: float = math.inf  # exp + leeway, epoch seconds

    def expired(self) -> bool:
        return self.expires < time.time()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.claims.roles or self.role == "admin"

    def has_permission(self, permission: str) -> bool:
        raw = self.claims.raw.get("permissions")
        granted = set(self.claims.scopes) | (set(map(str, raw)) if isinstance(raw, list) else set())
        return self.is_admin or permission in granted


class IdentityCache:
    """Verified identities by token, for the token's remaining lifetime, bounded.

    The codec already caches the signature check; this also keeps the Identity built from it,
    so a repeat token costs one dict lookup and a clock read. Revocation is unaffected: the
    blacklist is read on every request with the rate limit (ratelimit.py), by the jti."""

    MAX = 50_000

    def __init__(self) -> None:
        self._items: dict[str, Identity] = {}

    def get(self, token: str) -> Identity | None:
        return self._items.get(token)

    def put(self, token: str, identity: Identity) -> None:
        if len(self._items) >= self.MAX:
            now = time.time()
            self._items = {k: v for k, v in self._items.items() if v.expires >= now}
            if len(self._items) >= self.MAX:
                self._items.clear()
        self._items[token] = identity


def bearer_token(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; 401 ``UNAUTHORIZED`` when malformed."""
    try:
        return bearer(header)
    except MalformedAuthorization:
        raise Unauthorized("The Authorization header must be 'Bearer <token>'") from None


def authenticate(codec: TokenCodec, token: str) -> Identity:
    """Raises InvalidToken or TokenExpired (401) for a token that does not verify."""
    claims = codec.verify(token)
    role = "service" if claims.typ == "service" else (claims.role or "guest")
    expires = math.inf if claims.exp is None else claims.exp + codec.leeway
    return Identity(
        user_id=claims.sub, role=role, jti=claims.jti, claims=claims, sid=session_id(claims), expires=expires
    )


async def authenticate_after_refetch(codec: TokenCodec, token: str, unknown: UnknownSigningKey) -> Identity:
    """A token whose ``kid`` no key has: the JWKS is fetched again (single-flight, at most once
    per interval, see kit/jwks.py) and the token checked once more; else the same 401."""
    if codec.jwks is None or not await codec.jwks.refetch(unknown.kid):
        raise unknown
    return authenticate(codec, token)
