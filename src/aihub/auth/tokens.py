"""Token material of the auth service: access tokens for users, opaque refresh tokens, JWKS.

Signing keys, ``kid`` and the pinned verification live in :mod:`aihub.kit.jwt` and
:mod:`aihub.keys`, because every service verifies; only auth issues.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid

from aihub.auth.schemas import Jwk, JwksOut
from aihub.kit.jwt import TokenCodec

REFRESH_BYTES = 32  # 256 bits of randomness: guessing one is not an attack worth modelling


def new_refresh_token() -> str:
    return secrets.token_urlsafe(REFRESH_BYTES)


def hash_refresh_token(token: str) -> str:
    """SHA-256 is enough here (unlike passwords): the token is random, not chosen by a person."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue_access(codec: TokenCodec, *, user_id: uuid.UUID, email: str, roles: list[str], family_id: uuid.UUID) -> str:
    """Claims per API.md; ``sid`` names the refresh family so logout can revoke it."""
    top = roles[0] if roles else "guest"  # roles come ordered by level, highest first
    return codec.issue(sub=str(user_id), role=top, roles=roles or [top], email=email, extra={"sid": str(family_id)})


def jwks(codec: TokenCodec) -> JwksOut:
    return JwksOut(keys=[Jwk.model_validate(key.jwk()) for key in codec.public_keys])
