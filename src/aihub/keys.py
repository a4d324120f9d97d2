"""Asymmetric signing keys: loading from PEM (inline or a file), key IDs, JWK rendering.

The algorithm of a key is fixed by the key's type (RSA -> RS256, Ed25519 -> EdDSA), never by
a token: the verifier looks the key up by ``kid`` and accepts only that key's algorithm.
A key's ``kid`` is its RFC 7638 thumbprint unless one is configured, so auth and every
verifying service derive the same ``kid`` from the same key without sharing anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
MIN_RSA_BITS = 2048


class KeyConfigError(ValueError):  # a ValueError, so settings validation reports it
    """A configured key cannot be used."""


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str
    algorithm: str  # "RS256" | "EdDSA"
    key: PublicKey

    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.key), "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    algorithm: str
    key: PrivateKey

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.kid, self.algorithm, self.key.public_key())


def _pem_bytes(value: str) -> bytes:
    """Inline PEM text, or the path of a PEM file."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.encode()
    path = Path(text).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyConfigError(f"cannot read key file {path}: {exc.strerror}") from exc


def algorithm_of(key: PublicKey | PrivateKey) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyConfigError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise KeyConfigError("only RSA and Ed25519 keys are supported")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The required JWK members only (RFC 7517/8037), which is also what RFC 7638 hashes."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256): sorted required members, no whitespace."""
    members = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(members.encode()).digest())


def load_signing_key(value: str, kid: str | None = None) -> SigningKey:
    pem = _pem_bytes(value)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyConfigError("the private key is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyConfigError("only RSA and Ed25519 keys are supported")
    return SigningKey(kid or thumbprint(key.public_key()), algorithm_of(key), key)


def load_verify_keys(value: str) -> tuple[VerifyKey, ...]:
    """Comma-separated public keys (inline PEM or file paths); PEM text holds no commas."""
    keys = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        pem = _pem_bytes(item)
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise KeyConfigError("a public key is not a PEM public key") from exc
        if not isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            raise KeyConfigError("only RSA and Ed25519 keys are supported")
        keys.append(VerifyKey(thumbprint(key), algorithm_of(key), key))
    return tuple(keys)


def _b64_bytes(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise KeyConfigError("a key member is missing or not a string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error) as exc:
        raise KeyConfigError("a key member is not base64url") from exc


_ALGORITHM_OF_KTY = {"RSA": "RS256", "OKP": "EdDSA"}


def key_from_jwk(jwk: object) -> VerifyKey:
    """A published public key (RFC 7517), the inverse of ``VerifyKey.jwk``.

    Only what the verifier supports is accepted: an RSA key (>= 2048 bits) for RS256 or an
    Ed25519 key for EdDSA, with a ``kid``, meant for signatures. A symmetric (``oct``) key, an
    ``alg`` of ``none``/HS*/anything else, or private members are refused: a key set fetched
    over the network must never be able to turn on an algorithm the settings did not.
    """
    if not isinstance(jwk, dict):
        raise KeyConfigError("a key is not a JSON object")
    kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
    if not isinstance(kid, str) or not 0 < len(kid) <= 128:
        raise KeyConfigError("a key has no usable kid")
    expected = _ALGORITHM_OF_KTY.get(kty) if isinstance(kty, str) else None
    if expected is None:
        raise KeyConfigError(f"key {kid!r}: only RSA and Ed25519 keys are supported")
    if alg is not None and alg != expected:
        raise KeyConfigError(f"key {kid!r}: algorithm {alg!r} is not accepted for a {kty} key")
    if jwk.get("use", "sig") != "sig":
        raise KeyConfigError(f"key {kid!r} is not a signature key")
    if "d" in jwk:
        raise KeyConfigError(f"key {kid!r} carries private members")
    key: PublicKey
    if kty == "RSA":
        n = int.from_bytes(_b64_bytes(jwk.get("n")), "big")
        e = int.from_bytes(_b64_bytes(jwk.get("e")), "big")
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise KeyConfigError(f"key {kid!r} is not a valid RSA key") from exc
    else:
        if jwk.get("crv") != "Ed25519":
            raise KeyConfigError(f"key {kid!r}: only the Ed25519 curve is supported")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(_b64_bytes(jwk.get("x")))
        except ValueError as exc:
            raise KeyConfigError(f"key {kid!r} is not a valid Ed25519 key") from exc
    return VerifyKey(kid, algorithm_of(key), key)
