"""JWT issue and verification with the claims fixed in API.md.

The accepted algorithms are pinned by configuration, never taken from the token's header:
that is what defeats ``alg: none`` and HS/RS confusion.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt as pyjwt

from aihub.config import Settings
from aihub.keys import SigningKey, VerifyKey, load_signing_key, load_verify_keys
from aihub.kit.errors import AppError
from aihub.kit.jsonutil import loads
from aihub.kit.jwks import JwksClient

TokenType = Literal["access", "service", "refresh"]


class InvalidToken(AppError):
    status_code, code, message = 401, "INVALID_TOKEN", "The token is invalid"


class UnknownSigningKey(InvalidToken):
    """The token names a ``kid`` no configured or fetched key has (a 401 INVALID_TOKEN like any
    other bad token; async callers may fetch the JWKS again and retry, see ``verify_fresh``)."""

    message = "The token's signing key is unknown"

    def __init__(self, kid: str) -> None:
        super().__init__()
        self.kid = kid


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
    """Signs and verifies tokens.

    Signing: with ``signing_key`` (RS256 or EdDSA, ``kid`` in the header) when one is
    configured, else HS256 with ``secret``. Verification picks the key by the header's ``kid``
    and accepts only that key's algorithm; a token without ``kid`` is checked as HS256 against
    the secret, and only when ``accept_hs256``. The header's ``alg`` never chooses a key, which
    is what defeats ``alg: none`` and HS/RS confusion.

    Verified tokens are remembered until they expire: signature checking costs ~150 µs here,
    and a client presents the same token on every request. Revocation is not cached (the
    blacklist is checked per request by the caller).
    """

    secret: str
    issuer: str
    audience: str
    leeway: int
    access_ttl: int
    signing_key: SigningKey | None = None
    verify_keys: tuple[VerifyKey, ...] = ()
    accept_hs256: bool = True
    # Keys fetched from auth's JWKS (AIHUB_JWKS_URL), looked up after the configured ones.
    jwks: JwksClient | None = None
    _by_kid: dict[str, VerifyKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {k.kid: k for k in self.verify_keys}
        if self.signing_key is not None:
            keys.setdefault(self.signing_key.kid, self.signing_key.verify_key())
        object.__setattr__(self, "_by_kid", keys)
        if self.jwks is not None:
            # A key withdrawn from the JWKS must stop verifying now, not when cached tokens expire.
            self.jwks.on_withdrawn.append(self._verified.clear)

    _verified: dict[str, Claims] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCodec:
        signing = load_signing_key(settings.jwt_private_key, settings.jwt_key_id) if settings.jwt_private_key else None
        return cls(
            secret=settings.jwt_secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway_seconds,
            access_ttl=settings.access_token_ttl_seconds,
            signing_key=signing,
            verify_keys=load_verify_keys(settings.jwt_public_keys),
            accept_hs256=settings.hs256_accepted,
            jwks=JwksClient.from_settings(settings),
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        """Every algorithm some configured key accepts (for documentation and JWKS)."""
        algs = {k.algorithm for k in self._by_kid.values()}
        return (*sorted(algs), *(("HS256",) if self.accept_hs256 else ()))

    @property
    def public_keys(self) -> tuple[VerifyKey, ...]:
        """The keys a JWKS endpoint publishes: the signing key first, then older ones."""
        return (
            tuple(self._by_kid.values())
            if self.signing_key is None
            else (
                self.signing_key.verify_key(),
                *(k for k in self._by_kid.values() if k.kid != self.signing_key.kid),
            )
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
        extra: dict[str, Any] | None = None,
    ) -> str:
        """``ttl=-1`` means the configured access lifetime; ``ttl=None`` means no ``exp``."""
        issued = int(time.time()) if now is None else now
        claims: dict[str, Any] = {
            **(extra or {}),
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
        if self.signing_key is not None:
            key = self.signing_key
            return pyjwt.encode(claims, key.key, algorithm=key.algorithm, headers={"kid": key.kid})
        return pyjwt.encode(claims, self.secret, algorithm="HS256")

    def _key_for(self, token: str) -> tuple[Any, str]:
        header = _header(token)
        kid = header.get("kid")
        if kid is None:
            if not self.accept_hs256:
                raise InvalidToken("The token names no signing key")
            return self.secret, "HS256"
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("The token's signing key is unknown")
        found = self._by_kid.get(kid)
        if found is None:
            found = self.jwks.keys.get(kid) if self.jwks is not None else None
            if found is None:
                raise UnknownSigningKey(kid)
        return found.key, found.algorithm

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

    async def verify_fresh(self, token: str, *, allowed_types: tuple[str, ...] = ("access", "service")) -> Claims:
        """``verify``, plus one more chance for a token whose ``kid`` is unknown: the JWKS is
        fetched again (single-flight and rate-limited, see kit/jwks.py) and, when that brought
        the key, the token is checked once more. Without a JWKS URL it is ``verify``."""
        try:
            return self.verify(token, allowed_types=allowed_types)
        except UnknownSigningKey as exc:
            if self.jwks is None or not await self.jwks.refetch(exc.kid):
                raise
        return self.verify(token, allowed_types=allowed_types)

    def _decode(self, token: str, allowed_types: tuple[str, ...]) -> Claims:
        key, algorithm = self._key_for(token)
        try:
            raw = pyjwt.decode(
                token,
                key,
                algorithms=[algorithm],
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


def _header(token: str) -> dict[str, Any]:
    """The unverified header, only to pick a key. Parsed with orjson: PyJWT's
    ``get_unverified_header`` costs about as much as the HMAC check itself."""
    head = token.partition(".")[0]
    try:
        header = loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise InvalidToken from exc
    if not isinstance(header, dict):
        raise InvalidToken
    return header


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


def family_blacklist_key(sid: str) -> str:
    """Revokes every access token whose ``sid`` claim names this refresh family (a reused
    refresh token, an administrator's password reset). Cannot collide with a ``jti`` key."""
    return f"blacklist:sid:{sid}"


def session_id(claims: Claims) -> str | None:
    """The refresh family an access token belongs to (``sid``), when it names one."""
    sid = claims.raw.get("sid")
    return sid if isinstance(sid, str) and sid else None
