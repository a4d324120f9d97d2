"""An OpenID Connect client for one provider (Google): discovery, JWKS, the authorization URL
with PKCE, the code exchange and the ID token's verification.

The protocol rules are Authlib's and joserfc's: the authorization URL and the token request
(``prepare_grant_uri``, ``prepare_token_request``), PKCE S256, JWS verification against the
provider's key set, and the ID token's claims (``CodeIDToken``: ``iss``, ``aud``, ``exp``,
``iat``, ``nonce``, ``azp``, ``at_hash``). HTTP goes through aiohttp, the project's client:
Authlib's own async client is built on httpx, which the services do not use.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from aihub.config import Settings
from aihub.kit.jsonutil import JsonObject

log = structlog.get_logger("aihub.identity.oidc")

SCOPE = "openid email profile"
METADATA_TTL = 3600.0
# A token naming an unknown key makes us fetch the key set again (the provider rotated), but
# not more often than this: forged tokens with random key ids must not hammer the provider.
JWKS_REFETCH_SECONDS = 30.0
# Signatures we accept: asymmetric only, so a token can never be "signed" with a public key.
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ProviderError(Exception):
    """The provider could not be reached or answered something unusable."""


class IdTokenInvalid(Exception):
    """The ID token failed verification (signature, issuer, audience, expiry, nonce, …)."""


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """What this client reads of the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    signing_algs: tuple[str, ...]  # id_token_signing_alg_values_supported (may be empty)

    @classmethod
    def of(cls, doc: JsonObject, issuer: str) -> ProviderMetadata:
        """The document checked: its ``issuer`` must be ours exactly, its endpoints URLs."""
        if doc.get("issuer") != issuer:
            raise ProviderError("the discovery document names another issuer")
        urls = []
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ProviderError(f"the discovery document has no usable {name}")
            urls.append(value)
        offered = doc.get("id_token_signing_alg_values_supported")
        algs = tuple(a for a in offered if isinstance(a, str)) if isinstance(offered, list) else ()
        return cls(issuer, urls[0], urls[1], urls[2], algs)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The token response's fields this client uses."""

    id_token: str
    access_token: str | None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified ID token says the user is."""

    sub: str
    email: str | None
    email_verified: bool
    name: str | None

    @classmethod
    def of(cls, claims: JsonObject) -> Identity:
        email = claims.get("email")
        name = claims.get("name")
        verified = claims.get("email_verified")
        return cls(
            sub=str(claims["sub"]),
            email=email if isinstance(email, str) else None,
            # Google sends a boolean; some providers send the string "true".
            email_verified=verified is True or verified == "true",
            name=name[:100] if isinstance(name, str) and name.strip() else None,
        )


@dataclass
class OidcClient:
    issuer: str
    client_id: str
    client_secret: str
    timeout: float
    leeway: int
    _metadata: ProviderMetadata | None = None
    _metadata_at: float = 0.0
    _keys: KeySet | None = None
    _keys_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcClient:
        return cls(
            issuer=settings.oidc_google_issuer,
            client_id=settings.google_client_id or "",
            client_secret=settings.google_client_secret.get_secret_value() if settings.google_client_secret else "",
            timeout=settings.oidc_timeout_seconds,
            leeway=settings.jwt_leeway_seconds,
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get_json(self, url: str) -> JsonObject:
        try:
            async with self._http().get(url, headers={"Accept": "application/json"}) as response:
                if response.status != 200:
                    raise ProviderError(f"GET {url}: HTTP {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"GET {url}: {type(exc).__name__}") from exc
        if not isinstance(body, dict):
            raise ProviderError(f"GET {url}: not a JSON object")
        return body

    async def metadata(self) -> ProviderMetadata:
        """The discovery document, cached for an hour; its ``issuer`` must be ours exactly."""
        if self._metadata is not None and time.monotonic() - self._metadata_at < METADATA_TTL:
            return self._metadata
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._metadata_at >= METADATA_TTL:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = ProviderMetadata.of(await self._get_json(url), self.issuer)
                self._metadata, self._metadata_at = doc, time.monotonic()
        return self._metadata

    async def _key_set(self, *, force: bool = False) -> KeySet:
        stale = self._keys is None or (force and time.monotonic() - self._keys_at >= JWKS_REFETCH_SECONDS)
        if stale:
            meta = await self.metadata()
            raw = await self._get_json(meta.jwks_uri)
            try:
                keys = KeySet.import_key_set(raw)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise ProviderError("the provider's key set is not valid") from exc
            self._keys, self._keys_at = keys, time.monotonic()
        assert self._keys is not None
        return self._keys

    def authorization_url(
        self, meta: ProviderMetadata, *, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        return str(
            prepare_grant_uri(
                meta.authorization_endpoint,
                self.client_id,
                "code",
                redirect_uri=redirect_uri,
                scope=SCOPE,
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(verifier),
                code_challenge_method="S256",
            )
        )

    async def exchange(self, code: str, *, redirect_uri: str, verifier: str) -> Tokens:
        """The token request (client_secret_post, with the PKCE verifier)."""
        meta = await self.metadata()
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            client_id=self.client_id,
            client_secret=self.client_secret,
            code_verifier=verifier,
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        try:
            async with self._http().post(meta.token_endpoint, data=body, headers=headers) as response:
                payload = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"token request: {type(exc).__name__}") from exc
        if status != 200 or not isinstance(payload, dict):
            error = payload.get("error") if isinstance(payload, dict) else None
            raise ProviderError(f"token request: HTTP {status} {error or ''}".strip())
        id_token, access = payload.get("id_token"), payload.get("access_token")
        if not isinstance(id_token, str):
            raise ProviderError("token response has no id_token")
        return Tokens(id_token, access if isinstance(access, str) else None)

    async def verify_id_token(self, id_token: str, *, nonce: str, access_token: str | None) -> Identity:
        meta = await self.metadata()
        offered = meta.signing_algs or ("RS256",)
        algorithms = [alg for alg in offered if alg in ASYMMETRIC] or ["RS256"]
        try:
            keys = await self._key_set()
            try:
                token = jwt.decode(id_token, keys, algorithms=algorithms)
            except InvalidKeyIdError:
                token = jwt.decode(id_token, await self._key_set(force=True), algorithms=algorithms)
            options: dict[str, Any] = {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.client_id},
                "sub": {"essential": True},
                "exp": {"essential": True},
            }
            params: dict[str, Any] = {"nonce": nonce, "client_id": self.client_id}
            if access_token:
                params["access_token"] = access_token
            claims = CodeIDToken(token.claims, token.header, options, params)
            claims.validate(now=int(time.time()), leeway=self.leeway)
        except (JoseError, ValueError, TypeError) as exc:
            raise IdTokenInvalid(f"{type(exc).__name__}: {exc}") from exc
        return Identity.of(dict(claims))
