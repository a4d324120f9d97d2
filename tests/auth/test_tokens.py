"""Token verification by core: tampering, algorithm confusion, expiry, audience, type; RS256 and JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from aihub.config import Settings
from aihub.keys import KeyConfigError, thumbprint
from aihub.kit.jwt import InvalidToken, TokenCodec
from aihub.kit.runtime import Runtime
from tests.auth.conftest import assert_error, login, private_pem, public_pem, register, signed_up


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT assembled by hand, so that it can be signed the ways PyJWT refuses to."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def good_claims(sub: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": sub,
        "typ": "access",
        "role": "user",
        "roles": ["user"],
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": "aihub-auth",
        "aud": "aihub",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def me(core: httpx.AsyncClient, token: str) -> httpx.Response:
    return await core.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})


async def test_tampered_hs256_tokens_are_refused(
    auth_client: httpx.AsyncClient, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    s = await signed_up(auth_client, "tamper@example.com")
    secret = runtime.settings.jwt_secret.encode()
    assert (await me(client, forge({"alg": "HS256", "typ": "JWT"}, good_claims(s.user_id), secret))).status_code == 200

    head, body, sig = s.access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["role"], claims["roles"] = "admin", ["admin"]
    escalated = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    refused = {
        "wrong signature": forge({"alg": "HS256"}, good_claims(s.user_id), b"another-secret-another-secret!!"),
        "edited payload": escalated,
        "alg none": forge({"alg": "none"}, good_claims(s.user_id), None),
        "alg None": forge({"alg": "None"}, good_claims(s.user_id), None),
        "expired": forge({"alg": "HS256"}, good_claims(s.user_id, iat=1, exp=100), secret),
        "wrong aud": forge({"alg": "HS256"}, good_claims(s.user_id, aud="someone-else"), secret),
        "wrong iss": forge({"alg": "HS256"}, good_claims(s.user_id, iss="evil"), secret),
        "refresh typ": forge({"alg": "HS256"}, good_claims(s.user_id, typ="refresh"), secret),
        "no typ": forge({"alg": "HS256"}, good_claims(s.user_id, typ=None), secret),
        "access without exp": forge({"alg": "HS256"}, good_claims(s.user_id, exp=None), secret),
        "unknown kid": forge({"alg": "HS256", "kid": "nope"}, good_claims(s.user_id), secret),
        "not a jwt": "abc.def.ghi",
        "opaque refresh token as access": s.refresh,
    }
    for name, token in refused.items():
        response = await me(client, token)
        code = "TOKEN_EXPIRED" if name == "expired" else "INVALID_TOKEN"
        assert response.status_code == 401, name
        assert response.json()["code"] == code, name


async def test_rs256_cycle_and_confusion(
    rs_clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    rs_runtime: Runtime,
    rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> None:
    auth, core = rs_clients
    current, previous = rsa_keys
    s = await signed_up(auth, "rs@example.com")
    header = pyjwt.get_unverified_header(s.access)
    assert header["alg"] == "RS256"
    assert header["kid"] == thumbprint(current.public_key())
    assert (await me(core, s.access)).status_code == 200

    # JWKS publishes the current and the previous public key, nothing private.
    jwks = (await auth.get("/.well-known/jwks.json")).json()
    kids = [k["kid"] for k in jwks["keys"]]
    assert kids == [thumbprint(current.public_key()), thumbprint(previous.public_key())]
    assert all(set(k) == {"kty", "kid", "alg", "use", "n", "e"} for k in jwks["keys"])
    assert jwks["keys"][0]["alg"] == "RS256"

    # Rotation: a token signed by the previous key still verifies.
    old = pyjwt.encode(
        good_claims(s.user_id),
        previous,
        algorithm="RS256",
        headers={"kid": thumbprint(previous.public_key())},
    )
    assert (await me(core, old)).status_code == 200

    pub = public_pem(current).encode()
    kid = thumbprint(current.public_key())
    hs_secret = rs_runtime.settings.jwt_secret.encode()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        # HS/RS confusion: HS256 "signed" with the public key, with and without the key's kid.
        "hs256 with public key and kid": forge({"alg": "HS256", "kid": kid}, good_claims(s.user_id), pub),
        "hs256 with public key": forge({"alg": "HS256"}, good_claims(s.user_id), pub),
        # HS256 is no longer accepted once asymmetric signing is configured.
        "hs256 with the shared secret": forge({"alg": "HS256"}, good_claims(s.user_id), hs_secret),
        "alg none with kid": forge({"alg": "none", "kid": kid}, good_claims(s.user_id), None),
        "stranger key claiming our kid": pyjwt.encode(
            good_claims(s.user_id), stranger, algorithm="RS256", headers={"kid": kid}
        ),
        "stranger key, own kid": pyjwt.encode(
            good_claims(s.user_id),
            stranger,
            algorithm="RS256",
            headers={"kid": thumbprint(stranger.public_key())},
        ),
        "rs256 without kid": pyjwt.encode(good_claims(s.user_id), current, algorithm="RS256"),
        "wrong aud": pyjwt.encode(good_claims(s.user_id, aud="x"), current, algorithm="RS256", headers={"kid": kid}),
        "refresh typ": pyjwt.encode(
            good_claims(s.user_id, typ="refresh"), current, algorithm="RS256", headers={"kid": kid}
        ),
    }
    for name, token in refused.items():
        response = await me(core, token)
        assert response.status_code == 401, name
        assert response.json()["code"] == "INVALID_TOKEN", name
    expired = pyjwt.encode(good_claims(s.user_id, iat=1, exp=100), current, algorithm="RS256", headers={"kid": kid})
    assert_error(await me(core, expired), 401, "TOKEN_EXPIRED")

    # Logout works the same with RS256 tokens.
    assert (await auth.post("/logout", headers=s.headers)).status_code == 204
    assert_error(await me(core, s.access), 401, "TOKEN_REVOKED")


async def test_verify_only_service_with_public_key(
    settings: Settings, rs_runtime: Runtime, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    """Core or the gateway need only the public key (no private key, no shared secret)."""
    verifier = TokenCodec.from_settings(
        Settings(**{**settings.model_dump(), "jwt_public_keys": public_pem(rsa_keys[0])})
    )
    token = rs_runtime.codec.issue(sub="u", role="user")
    assert verifier.verify(token).sub == "u"
    assert verifier.algorithms == ("RS256",)
    with pytest.raises(InvalidToken):
        verifier.verify(TokenCodec.from_settings(settings).issue(sub="u", role="user"))


async def test_eddsa_signing(settings: Settings) -> None:
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    codec = TokenCodec.from_settings(
        Settings(**{**settings.model_dump(), "jwt_private_key": pem, "jwt_key_id": "ed-1"})
    )
    token = codec.issue(sub="u", role="user")
    assert pyjwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"}
    assert codec.verify(token).sub == "u"
    assert codec.public_keys[0].jwk()["kty"] == "OKP"


def test_bad_key_settings_stop_the_start(tmp_path: Any) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    with pytest.raises(ValueError, match="2048"):
        Settings(jwt_private_key=private_pem(weak))
    with pytest.raises(ValueError, match="cannot read key file"):
        Settings(jwt_private_key=str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="not a PEM public key"):
        Settings(jwt_public_keys="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
    assert issubclass(KeyConfigError, ValueError)


def test_private_key_from_a_file(tmp_path: Any) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "jwt.pem"
    path.write_text(private_pem(key))
    settings = Settings(jwt_private_key=str(path))
    assert not settings.hs256_accepted
    assert TokenCodec.from_settings(settings).signing_key is not None


async def test_jwks_is_empty_with_hs256_only(auth_client: httpx.AsyncClient) -> None:
    response = await auth_client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.json() == {"keys": []}
    assert "max-age" in response.headers["cache-control"]


async def test_register_login_on_rs_runtime_is_verified_by_hs_core_never(
    rs_clients: tuple[httpx.AsyncClient, httpx.AsyncClient], client: httpx.AsyncClient
) -> None:
    """A core that is not configured with the RS key refuses RS tokens (no silent acceptance)."""
    auth, _ = rs_clients
    await register(auth, "mixed@example.com")
    s = await login(auth, "mixed@example.com")
    assert_error(await me(client, s.access), 401, "INVALID_TOKEN")
