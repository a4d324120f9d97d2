"""JWT issue and verification with the claims fixed in API.md.

The accepted algorithms are pinned by configuration, never taken from the token's header:
that is what defeats ``alg: none`` and HS/RS confusion.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt as pyjwt

from aihub.config import Settings
from aihub.kit.errors import AppError

TokenType = Literal["access", "service", "refresh"]


class InvalidToken(AppError):
    status_code, code, message = 401, "INVALID_TOKEN", "The token is invalid"


class TokenExpired(AppError):
    status_code, code, message = 401, "TOKEN_EXPIRED", "The token has expired"


class TokenRevoked(AppError):
    status_code, code, message = 401, "TOKEN_REVOKED", "The token has been revoked"


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    typ: str
    jti: str
    role: str
    roles: tuple[str, ...]
    email: str | None
    scopes: tuple[str, ...]
    iat: int
    exp: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)


_CACHE_MAX = 20_000


@dataclass(frozen=True, slots=True)
class TokenCodec:
    """Signs and verifies tokens. HS256 by default; the auth service may add asymmetric keys.

    Verified tokens are remembered until they expire: signature checking costs ~150 µs here,
    and a client presents the same token on every request. Revocation is not cached (the
    blacklist is checked per request by the caller).
    """

    secret: str
    issuer: str
    audience: str
    leeway: int
    access_ttl: int
    algorithms: tuple[str, ...] = ("HS256",)
    _verified: dict[str, Claims] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        return cls(
            secret=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
            access_ttl=settings.access_token_ttl_seconds,
        )

    def issue(
        self,
        *,
        sub: str,
        typ: TokenType = "access",
        role: str,
        roles: list[str] | tuple[str, ...] = (),
        email: str | None = None,
        scopes: list[str] | tuple[str, ...] | None = None,
        ttl: int | None = -1,
        jti: str | None = None,
        now: int | None = None,
    ) -> str:
        """``ttl=-1`` means the configured access lifetime; ``ttl=None`` means no ``exp``."""
        issued = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            "sub": sub,
            "typ": typ,
            "role": role,
            "roles": list(roles) or [role],
            "jti": jti or uuid.uuid4().hex,
            "iat": issued,
            "iss": self.issuer,
            "aud": self.audience,
        }
        if email is not None:
            claims["email"] = email
        if scopes is not None:
            claims["scopes"] = list(scopes)
        lifetime = self.access_ttl if ttl == -1 else ttl
        if lifetime is not None:
            claims["exp"] = issued + lifetime
        return pyjwt.encode(claims, self.secret, algorithm=self.algorithms[0])

    def verify(self, token: str, *, allowed_types: tuple[str, ...] = ("access", "service")) -> Claims:
        cached = self._verified.get(token)
        if cached is not None:
            if cached.exp is not None and cached.exp + self.leeway < time.time():
                del self._verified[token]
                raise TokenExpired
            if cached.typ not in allowed_types:
                raise InvalidToken("The token is not of an accepted type")
            return cached
        claims = self._decode(token, allowed_types)
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()  # crude but bounded; a full cache refills within seconds
        self._verified[token] = claims
        return claims

    def _decode(self, token: str, allowed_types: tuple[str, ...]) -> Claims:
        try:
            raw = pyjwt.decode(
                token,
                self.secret,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["sub", "jti", "iat", "iss", "aud", "typ"]},
            )
        except pyjwt.ExpiredSignatureError as exc:
            raise TokenExpired from exc
        except pyjwt.PyJWTError as exc:
            raise InvalidToken from exc
        return _claims(raw, allowed_types)


def _claims(raw: dict[str, Any], allowed_types: tuple[str, ...]) -> Claims:
    typ = raw.get("typ")
    if typ not in allowed_types:
        raise InvalidToken("The token is not of an accepted type")
    if typ == "access" and "exp" not in raw:
        raise InvalidToken("An access token must expire")
    roles = raw.get("roles") or []
    scopes = raw.get("scopes") or []
    if not isinstance(roles, list) or not isinstance(scopes, list):
        raise InvalidToken
    return Claims(
        sub=str(raw["sub"]),
        typ=str(typ),
        jti=str(raw["jti"]),
        role=str(raw.get("role", "")),
        roles=tuple(str(r) for r in roles),
        email=raw.get("email"),
        scopes=tuple(str(s) for s in scopes),
        iat=int(raw["iat"]),
        exp=int(raw["exp"]) if "exp" in raw else None,
        raw=raw,
    )


def blacklist_key(jti: str) -> str:
    return f"blacklist:{jti}"
