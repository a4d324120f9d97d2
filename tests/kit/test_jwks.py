"""Keys fetched from a JWKS: what is accepted, refetch on an unknown kid, its rate limit."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from aihub.config import Settings
from aihub.keys import KeyConfigError, SigningKey, key_from_jwk, thumbprint
from aihub.kit.jwks import JwksClient, max_age, next_refresh, parse_key_set
from aihub.kit.jwt import InvalidToken, TokenCodec, UnknownSigningKey
from tests.conftest import FakeJwks

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def signer(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, kid: str | None = None) -> TokenCodec:
    """The issuing side, as auth runs it with AIHUB_JWT_PRIVATE_KEY."""
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "EdDSA"
    signing = SigningKey(kid or thumbprint(key.public_key()), algorithm, key)
    return TokenCodec(
        secret="unused", issuer="aihub-auth", audience="aihub", leeway=10, access_ttl=900, signing_key=signing
    )


def jwk_of(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, kid: str | None = None) -> dict[str, Any]:
    return signer(key, kid).public_keys[0].jwk()


def forged(kid: str) -> str:
    """A well-formed token naming a kid nobody published (signed with some other key)."""
    return signer(ed25519.Ed25519PrivateKey.generate(), kid).issue(sub="mallory", role="admin")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------ what a key set may hold


@pytest.mark.parametrize("key", [RSA_KEY, ED_KEY], ids=["rsa", "ed25519"])
def test_published_key_round_trips(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> None:
    published = signer(key).public_keys[0]
    parsed = key_from_jwk(published.jwk())
    assert (parsed.kid, parsed.algorithm) == (published.kid, published.algorithm)
    assert parsed.jwk() == published.jwk()


WEAK = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64(b"a-shared-secret")},
        {**jwk_of(RSA_KEY), "alg": "none"},
        {**jwk_of(RSA_KEY), "alg": "HS256"},
        {**jwk_of(RSA_KEY), "alg": "RS512"},
        {**jwk_of(ED_KEY), "alg": "RS256"},
        {**jwk_of(RSA_KEY), "use": "enc"},
        {**jwk_of(RSA_KEY), "d": "private"},
        {k: v for k, v in jwk_of(RSA_KEY).items() if k != "kid"},
        {**jwk_of(RSA_KEY), "kid": ""},
        {**jwk_of(RSA_KEY), "n": "!!!"},
        {**jwk_of(ED_KEY), "crv": "X25519"},
        {**jwk_of(ED_KEY), "x": b64(b"short")},
        jwk_of(WEAK),
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        ["not", "an", "object"],
    ],
)
def test_unusable_keys_are_refused(jwk: Any) -> None:
    with pytest.raises(KeyConfigError):
        key_from_jwk(jwk)


def test_a_key_set_keeps_only_usable_keys() -> None:
    good = jwk_of(ED_KEY, "ed-1")
    body = json.dumps(
        {"keys": [{"kty": "oct", "kid": "hs", "k": b64(b"secret")}, {**jwk_of(RSA_KEY, "rsa"), "alg": "none"}, good]}
    ).encode()
    assert list(parse_key_set(body)) == ["ed-1"]


def test_cache_control_and_the_refresh_delay() -> None:
    assert max_age("public, max-age=300") == 300
    assert max_age('max-age="60"') == 60
    assert max_age("no-store") == 0
    assert max_age("public") is None and max_age(None) is None and max_age("max-age=soon") is None
    # The answer's max-age is honoured below the configured refresh, never under the refetch floor.
    assert next_refresh(None, refresh=300, floor=10) == 300
    assert next_refresh(60, refresh=300, floor=10) == 60
    assert next_refresh(3600, refresh=300, floor=10) == 300
    assert next_refresh(0, refresh=300, floor=10) == 10


# ------------------------------------------------------------------ fetching and refetching


class Clock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def verifier(server: FakeJwks, clock: Clock, *, interval: float = 60, timeout: float = 2) -> TokenCodec:
    """A verify-only service's codec: no key of its own, keys from the JWKS."""
    client = JwksClient(server.url, refresh_seconds=300, refetch_interval=interval, timeout=timeout, clock=clock)
    return TokenCodec(
        secret="unused",
        issuer="aihub-auth",
        audience="aihub",
        leeway=10,
        access_ttl=900,
        accept_hs256=False,
        jwks=client,
    )


@pytest.fixture
async def closing() -> AsyncIterator[list[TokenCodec]]:
    codecs: list[TokenCodec] = []
    yield codecs
    for codec in codecs:
        assert codec.jwks is not None
        await codec.jwks.close()


async def test_unknown_kid_refetches_once_for_a_burst_then_waits_for_the_interval(
    fake_jwks: FakeJwks, closing: list[TokenCodec]
) -> None:
    fake_jwks.keys = [jwk_of(RSA_KEY, "a")]
    clock = Clock()
    codec = verifier(fake_jwks, clock)
    closing.append(codec)
    token_a = signer(RSA_KEY, "a").issue(sub="alice", role="user")
    # The first token finds no key yet: it waits on the (single) fetch and passes.
    assert (await codec.verify_fresh(token_a)).sub == "alice"
    assert fake_jwks.hits == 1
    assert codec.jwks is not None and codec.jwks.state == "ok"

    # Auth rotates to an Ed25519 key; fifty requests carrying its first token make one fetch.
    fake_jwks.keys = [jwk_of(ED_KEY, "b"), jwk_of(RSA_KEY, "a")]
    clock.now += 61
    token_b = signer(ED_KEY, "b").issue(sub="bob", role="user")
    claims = await asyncio.gather(*(codec.verify_fresh(token_b) for _ in range(50)))
    assert {c.sub for c in claims} == {"bob"}
    assert fake_jwks.hits == 2

    # Forged kids: a burst makes at most one fetch per interval, and each is refused.
    clock.now += 59
    results = await asyncio.gather(
        *(codec.verify_fresh(forged(uuid.uuid4().hex)) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, UnknownSigningKey) and r.code == "INVALID_TOKEN" for r in results)
    assert fake_jwks.hits == 2  # the rotation's fetch was within the interval: none at all
    clock.now += 1  # the interval has passed
    results = await asyncio.gather(
        *(codec.verify_fresh(forged(uuid.uuid4().hex)) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, InvalidToken) for r in results)
    assert fake_jwks.hits == 3  # exactly one for the whole burst
    # A known kid never fetches: not for a new token either.
    assert (await codec.verify_fresh(signer(ED_KEY, "b").issue(sub="bob2", role="user"))).sub == "bob2"
    assert fake_jwks.hits == 3


async def test_keys_from_the_set_cannot_enable_hs256_or_none(fake_jwks: FakeJwks, closing: list[TokenCodec]) -> None:
    secret = b"a-shared-secret-long-enough-for-hs256"
    fake_jwks.keys = [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64(secret)}, jwk_of(RSA_KEY, "a")]
    codec = verifier(fake_jwks, Clock(), interval=0)
    closing.append(codec)
    claims = {"sub": "x", "typ": "access", "jti": "j", "iat": 1, "exp": 2**40, "iss": "aihub-auth", "aud": "aihub"}
    refused = [
        pyjwt.encode(claims, secret, algorithm="HS256", headers={"kid": "hs"}),
        pyjwt.encode(claims, "", algorithm="none", headers={"kid": "a"}),
        # HS/RS confusion: HMAC keyed with the published RSA key, under its kid.
        pyjwt.encode(claims, b"not-the-rsa-key-but-any-bytes-at-all", algorithm="HS256", headers={"kid": "a"}),
    ]
    for token in refused:
        with pytest.raises(InvalidToken):
            await codec.verify_fresh(token)
    assert codec.jwks is not None and list(codec.jwks.keys) == ["a"]


async def test_a_withdrawn_key_stops_verifying_at_once(fake_jwks: FakeJwks, closing: list[TokenCodec]) -> None:
    fake_jwks.keys = [jwk_of(RSA_KEY, "a"), jwk_of(ED_KEY, "b")]
    clock = Clock()
    codec = verifier(fake_jwks, clock)
    closing.append(codec)
    token_a = signer(RSA_KEY, "a").issue(sub="alice", role="user")
    assert (await codec.verify_fresh(token_a)).sub == "alice"  # now in the verified-token cache
    fake_jwks.keys = [jwk_of(ED_KEY, "b")]  # key a is withdrawn (compromised, say)
    clock.now += 60
    with pytest.raises(InvalidToken):
        await codec.verify_fresh(forged("c"))  # any fetch picks up the new set
    with pytest.raises(UnknownSigningKey):
        codec.verify(token_a)  # not served from the cache any more


async def test_auth_down_keeps_known_keys_and_refuses_unknown_ones(
    fake_jwks: FakeJwks, closing: list[TokenCodec]
) -> None:
    fake_jwks.keys = [jwk_of(RSA_KEY, "a")]
    clock = Clock()
    codec = verifier(fake_jwks, clock, timeout=0.5)
    closing.append(codec)
    assert codec.jwks is not None
    assert await codec.jwks.refetch("a")
    issuer = signer(RSA_KEY, "a")

    for outage in ("refused", "hangs", "errors", "garbage", "empty"):
        if outage == "refused":
            await fake_jwks.stop()
        elif outage == "hangs":
            await fake_jwks.start()
            fake_jwks.delay = 5  # longer than the timeout
        elif outage == "errors":
            fake_jwks.delay, fake_jwks.status = 0, 503
        elif outage == "garbage":
            fake_jwks.status, fake_jwks.keys = 200, [{"kty": "oct", "kid": "x", "k": "AA"}]
        else:
            fake_jwks.keys = []
        clock.now += 60
        with pytest.raises(UnknownSigningKey):
            await codec.verify_fresh(forged(uuid.uuid4().hex))
        assert codec.jwks.state == "stale", outage
        # A token with a known kid (not cached yet) still verifies from the keys held.
        assert (await codec.verify_fresh(issuer.issue(sub=outage, role="user"))).sub == outage
        assert list(codec.jwks.keys) == ["a"], outage

    # Auth answers again: the next fetch clears the stale state.
    fake_jwks.keys = [jwk_of(RSA_KEY, "a")]
    clock.now += 60
    assert not await codec.jwks.refetch("unknown")
    assert codec.jwks.state == "ok"


async def test_loaded_in_the_background_and_refreshed_by_max_age(
    fake_jwks: FakeJwks, closing: list[TokenCodec]
) -> None:
    await fake_jwks.stop()  # auth is not up yet when the verifier starts
    fake_jwks.keys = [jwk_of(ED_KEY, "b")]
    fake_jwks.cache_control = "max-age=0"  # refresh as often as the refetch interval allows
    codec = TokenCodec.from_settings(
        Settings(env="test", jwks_url=fake_jwks.url, jwks_refetch_interval_seconds=0.2, jwks_timeout_seconds=2)
    )
    closing.append(codec)
    client = codec.jwks
    assert isinstance(client, JwksClient)
    client.start()
    client.start()  # idempotent: the gateway and core may share one codec
    await asyncio.sleep(0.3)
    assert client.state == "loading"  # nothing fails: it retries with back-off
    await fake_jwks.start()
    for _ in range(200):
        if fake_jwks.hits >= 3:
            break
        await asyncio.sleep(0.05)
    assert cast(str, client.state) == "ok"  # mypy keeps the narrowing from before the awaits
    assert fake_jwks.hits >= 3  # loaded, then refreshed on its own by the answer's max-age
    assert codec.verify(signer(ED_KEY, "b").issue(sub="bob", role="user")).sub == "bob"


def test_jwks_url_settings() -> None:
    with pytest.raises(ValueError, match="jwks_url"):
        Settings(jwks_url="ftp://auth/.well-known/jwks.json")
    assert TokenCodec.from_settings(Settings(env="test")).jwks is None
    with_url = Settings(env="test", jwks_url="http://127.0.0.1:1/.well-known/jwks.json")
    # A JWKS means asymmetric tokens: HS256 is off unless asked for.
    assert not with_url.hs256_accepted
    assert Settings(env="test", jwks_url=with_url.jwks_url, jwt_accept_hs256=True).hs256_accepted
