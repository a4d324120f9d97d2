"""Auth test helpers: sign up and sign in through the HTTP stack; an RS256-signing runtime."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.conftest import _auth_app, _core_app

PASSWORD = "correct horse battery"


@dataclass
class Session:
    user_id: str
    email: str
    access: str
    refresh: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


async def register(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    return dict(response.json()["user"])


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Session:
    response = await client.post("/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    return Session(body["user"]["id"], email, body["accessToken"], body["refreshToken"], body)


async def age_rotation(runtime: Runtime, refresh_token: str) -> None:
    """Move a spent token's rotation back past the reuse grace: presenting it again is then
    reuse, as it would be after waiting (tests never sleep on a clock)."""
    from sqlalchemy import select, update

    from aihub.auth.tokens import hash_refresh_token
    from aihub.models import RefreshToken

    back = dt.timedelta(seconds=runtime.settings.refresh_reuse_grace_seconds + 1)
    tx = runtime.tx()
    try:
        row = (
            await tx.session.execute(
                select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
            )
        ).scalar_one()
        assert row.used_at is not None
        await tx.session.execute(
            update(RefreshToken).where(RefreshToken.id == row.id).values(used_at=row.used_at - back)
        )
        await tx.commit()
    finally:
        await tx.close()


async def signed_up(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Session:
    await register(client, email, password)
    return await login(client, email, password)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """Two keys: the current one and the one it replaced (rotation)."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
async def rs_runtime(
    settings: Settings, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> AsyncIterator[Runtime]:
    """Same database and store as ``runtime``, but tokens signed with RS256 (old key still verifies)."""
    current, previous = rsa_keys
    rs = Settings(
        **{
            **settings.model_dump(),
            "jwt_private_key": private_pem(current),
            "jwt_public_keys": public_pem(previous),
        }
    )
    rt = Runtime.build(rs)
    yield rt
    await rt.close()


@pytest.fixture
async def rs_clients(rs_runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(auth, core) clients over the RS256 runtime."""
    auth = httpx.AsyncClient(transport=httpx.ASGITransport(app=_auth_app(rs_runtime)), base_url="http://auth.test")
    core = httpx.AsyncClient(transport=httpx.ASGITransport(app=_core_app(rs_runtime)), base_url="http://core.test")
    async with auth, core:
        yield auth, core


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    return dict(body)
