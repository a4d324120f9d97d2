"""Redis unreachable: login stays up (the lockout fails open), token checks fail closed (503)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.auth.conftest import assert_error, login, register
from tests.conftest import _auth_app, free_port


@pytest.fixture
async def broken_store_auth(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    rt = Runtime.build(Settings(env="test", database_url=sqlite_url, redis_url=dead, auto_migrate=False))
    transport = httpx.ASGITransport(app=_auth_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
        yield client
    await rt.close()


async def test_store_outage(broken_store_auth: httpx.AsyncClient) -> None:
    await register(broken_store_auth, "outage@example.com")
    session = await login(broken_store_auth, "outage@example.com")
    # Without the blacklist nobody can tell a revoked token from a good one: refuse, clearly.
    assert_error(await broken_store_auth.get("/me", headers=session.headers), 503, "STORE_UNAVAILABLE")
    assert_error(await broken_store_auth.post("/logout", headers=session.headers), 503, "STORE_UNAVAILABLE")
    # Refresh needs no store.
    refreshed = await broken_store_auth.post("/refresh", json={"refreshToken": session.refresh})
    assert refreshed.status_code == 200
