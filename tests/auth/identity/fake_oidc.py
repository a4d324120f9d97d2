"""A local OpenID provider (aiohttp) that speaks the real protocol, standing in for Google.

It serves discovery, JWKS, an authorization endpoint that approves at once (redirecting back
with a code, as Google does after the user agreed) and a token endpoint that checks the
client secret, the redirect URI, the code (single use) and the PKCE verifier, then returns an
RS256 ID token. Knobs on the instance make it misbehave the ways a test needs: ``user`` is
the next person to sign in; ``id_token_changes`` overrides claims (a wrong nonce, audience,
issuer, expiry); ``sign_with`` signs with another key; ``kid`` names another key id.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import LocalServer

CLIENT_ID = "aihub-test-client.apps.example"
CLIENT_SECRET = "test-client-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class GoogleUser:
    sub: str
    email: str
    email_verified: bool = True
    name: str | None = "Test Person"


@dataclass
class FakeOidc(LocalServer):
    port: int
    key: rsa.RSAPrivateKey
    kid: str = "fake-key-1"
    user: GoogleUser = field(default_factory=lambda: GoogleUser(sub="g-1", email="person@gmail.example"))
    id_token_changes: dict[str, Any] = field(default_factory=dict)
    sign_with: rsa.RSAPrivateKey | None = None
    signing_kid: str | None = None
    token_status: int = 200
    runner: Any = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    shutdown_timeout = 0.1

    @property
    def issuer(self) -> str:
        return self.url

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/authorize", self._authorize)
        app.router.add_post("/token", self._token)
        app.router.add_get("/client/landing", self._landing)
        return app

    async def _discovery(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def _jwks(self, _: web.Request) -> web.Response:
        jwk = RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": [jwk]})

    async def _authorize(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.authorize_requests.append(query)
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return web.json_response({"error": "invalid_request"}, status=400)
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return web.json_response({"error": "invalid_request", "error_description": "PKCE required"}, status=400)
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": query["redirect_uri"],
            "challenge": query["code_challenge"],
            "nonce": query.get("nonce"),
            "user": self.user,
        }
        location = query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})
        raise web.HTTPFound(location)

    async def _token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.token_requests.append({k: str(v) for k, v in form.items()})
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        grant = self.codes.pop(str(form.get("code")), None)  # a code works once
        if grant is None or form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "invalid_grant"}, status=400)
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return web.json_response({"error": "invalid_grant", "error_description": "redirect_uri"}, status=400)
        verifier = str(form.get("code_verifier", ""))
        if _b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE verifier"}, status=400)
        if self.token_status != 200:
            return web.json_response({"error": "server_error"}, status=self.token_status)
        access = secrets.token_urlsafe(24)
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 3599,
                "scope": "openid email profile",
                "id_token": self.id_token(grant["user"], nonce=grant["nonce"], access_token=access),
            }
        )

    def id_token(self, user: GoogleUser, *, nonce: str | None, access_token: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "azp": CLIENT_ID,
            "aud": CLIENT_ID,
            "sub": user.sub,
            "email": user.email,
            "email_verified": user.email_verified,
            "at_hash": _b64(hashlib.sha256(access_token.encode()).digest()[:16]),
            "nonce": nonce,
            "iat": now,
            "exp": now + 3600,
        }
        if user.name:
            claims["name"] = user.name
        claims.update(self.id_token_changes)
        key = self.sign_with or self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.signing_kid or self.kid})

    async def _landing(self, request: web.Request) -> web.Response:
        """The client application's redirect URI (for the test through the gateway)."""
        return web.json_response(dict(request.query))
