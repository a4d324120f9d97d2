"""Token verification: the claims of API.md, pinned algorithms, and the refusals."""

from __future__ import annotations

import time

import jwt as pyjwt
import pytest

from aihub.config import Settings
from aihub.kit.jwt import InvalidToken, TokenCodec, TokenExpired

codec = TokenCodec.from_settings(Settings(env="test"))


def test_roundtrip_has_every_claim() -> None:
    token = codec.issue(sub="u1", role="user", roles=["user"], email="a@b.c")
    claims = codec.verify(token)
    assert (claims.sub, claims.typ, claims.role, claims.roles, claims.email) == (
        "u1",
        "access",
        "user",
        ("user",),
        "a@b.c",
    )
    raw = pyjwt.decode(token, options={"verify_signature": False})
    assert set(raw) == {"sub", "typ", "role", "roles", "jti", "iat", "exp", "iss", "aud", "email"}
    assert raw["iss"] == "aihub-auth" and raw["aud"] == "aihub" and raw["exp"] - raw["iat"] == 900


def test_service_token_without_expiry() -> None:
    token = codec.issue(sub="svc", typ="service", role="service", scopes=["credits:deduct"], ttl=None)
    claims = codec.verify(token)
    assert claims.exp is None and claims.scopes == ("credits:deduct",)


@pytest.mark.parametrize(
    "make",
    [
        lambda: codec.issue(sub="u", role="user")[:-3] + "abc",  # signature
        lambda: pyjwt.encode(
            {"sub": "u", "typ": "access", "jti": "j", "iat": 1, "exp": 2**40, "iss": "aihub-auth", "aud": "aihub"},
            key="",
            algorithm="none",
        ),
        lambda: pyjwt.encode(
            {"sub": "u", "typ": "access", "jti": "j", "iat": 1, "exp": 2**40, "iss": "aihub-auth", "aud": "aihub"},
            "another-secret-that-is-long-enough-1234",
            algorithm="HS256",
        ),
        lambda: pyjwt.encode(
            {"sub": "u", "typ": "access", "jti": "j", "iat": 1, "exp": 2**40, "iss": "evil", "aud": "aihub"},
            codec.secret,
            algorithm="HS256",
        ),
        lambda: pyjwt.encode(
            {"sub": "u", "typ": "access", "jti": "j", "iat": 1, "exp": 2**40, "iss": "aihub-auth", "aud": "other"},
            codec.secret,
            algorithm="HS256",
        ),
        lambda: codec.issue(sub="u", typ="refresh", role="user"),
        lambda: codec.issue(sub="u", role="user", ttl=None),  # an access token must expire
        lambda: pyjwt.encode(
            {"sub": "u", "typ": "access", "iat": 1, "exp": 2**40, "iss": "aihub-auth", "aud": "aihub"},
            codec.secret,
            algorithm="HS256",
        ),  # no jti
    ],
)
def test_refusals(make: object) -> None:
    with pytest.raises(InvalidToken):
        codec.verify(make())  # type: ignore[operator]


def test_expired_is_its_own_code() -> None:
    token = codec.issue(sub="u", role="user", now=int(time.time()) - 3600)
    with pytest.raises(TokenExpired):
        codec.verify(token)
    # Within the leeway it still passes.
    fresh = codec.issue(sub="u", role="user", now=int(time.time()) - 900 - 5)
    assert codec.verify(fresh).sub == "u"
