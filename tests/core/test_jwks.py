"""Core verifies tokens itself (defence in depth), with keys from auth's JWKS when configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.conftest import FakeJwks, _auth_app, _core_app, create_user
from tests.kit.test_jwks import forged, jwk_of, signer


@pytest.fixture
async def jwks_runtime(settings: Settings, fake_jwks: FakeJwks) -> AsyncIterator[Runtime]:
    rt = Runtime.build(Settings(**{**settings.model_dump(), "jwks_url": fake_jwks.url}))
    yield rt
    await rt.close()


async def test_core_verifies_with_fetched_keys_and_waits_for_them_to_be_ready(
    jwks_runtime: Runtime, fake_jwks: FakeJwks
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    fake_jwks.keys = [jwk_of(key, "auth-1")]
    caller = await create_user(jwks_runtime, roles=["user"])
    token = signer(key, "auth-1").issue(sub=caller.id, role="user", roles=["user"], email=caller.email)
    core = httpx.AsyncClient(transport=httpx.ASGITransport(app=_core_app(jwks_runtime)), base_url="http://core")
    auth = httpx.AsyncClient(transport=httpx.ASGITransport(app=_auth_app(jwks_runtime)), base_url="http://auth")
    async with core, auth:
        ready = await core.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["jwks"] == "loading"
        # Auth publishes the keys: its readiness never waits on a JWKS (which may be its own).
        ready = await auth.get("/health/ready")
        assert ready.status_code == 200 and "jwks" not in ready.json()["checks"]

        response = await core.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == caller.id
        assert fake_jwks.hits == 1
        ready = await core.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["jwks"] == "ok"

        # A forged kid right after: 401 in the error shape, and no second request to auth.
        response = await core.get("/api/users/me", headers={"Authorization": f"Bearer {forged('nope')}"})
        assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
        assert fake_jwks.hits == 1
        # HS256 with the shared secret is off once keys come from a JWKS.
        hs = jwks_runtime.codec.issue(sub=caller.id, role="user")
        response = await core.get("/api/users/me", headers={"Authorization": f"Bearer {hs}"})
        assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
