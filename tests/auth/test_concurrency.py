"""Races through a real uvicorn server on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from aihub.models import RefreshToken
from tests.auth.conftest import PASSWORD, age_rotation, login, register
from tests.conftest import LiveServer

pytestmark = pytest.mark.postgres


async def test_two_tabs_refreshing_at_once_get_the_same_pair(live_auth: LiveServer) -> None:
    """N parallel refreshes with one token (tabs racing): one rotation wins, every other request
    gets the very same new pair within the grace, and the family lives on."""
    async with httpx.AsyncClient(base_url=live_auth.url, timeout=60) as http:
        await register(http, "race@example.com")
        session = await login(http, "race@example.com")
        responses = await asyncio.gather(
            *(http.post("/refresh", json={"refreshToken": session.refresh}) for _ in range(20))
        )
        assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
        pairs = {(r.json()["refreshToken"], r.json()["accessToken"]) for r in responses}
        assert len(pairs) == 1
        ((new_refresh, new_access),) = pairs
        assert new_refresh != session.refresh
        # Not revoked: the new refresh token rotates normally and the access token is accepted.
        me = await http.get("/me", headers={"Authorization": f"Bearer {new_access}"})
        assert me.status_code == 200, me.text
        onward = await http.post("/refresh", json={"refreshToken": new_refresh})
        assert onward.status_code == 200, onward.text
    tx = live_auth.runtime.tx()
    try:
        revoked = await tx.session.execute(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_not(None))
        )
        rows = await tx.session.execute(select(func.count()).select_from(RefreshToken))
        assert revoked.scalar_one() == 0
        assert rows.scalar_one() == 3  # login, one rotation for all twenty, the onward one
    finally:
        await tx.close()


async def test_racing_reuse_after_the_grace_still_revokes_the_family(live_auth: LiveServer) -> None:
    """Past the grace, parallel presentations of a spent token are reuse: the family dies."""
    async with httpx.AsyncClient(base_url=live_auth.url, timeout=60) as http:
        await register(http, "late@example.com")
        session = await login(http, "late@example.com")
        rotated = (await http.post("/refresh", json={"refreshToken": session.refresh})).json()
        await age_rotation(live_auth.runtime, session.refresh)
        responses = await asyncio.gather(
            *(http.post("/refresh", json={"refreshToken": session.refresh}) for _ in range(12))
        )
        assert Counter(r.json()["code"] for r in responses) == {"REFRESH_TOKEN_REUSED": 12}
        after = await http.post("/refresh", json={"refreshToken": rotated["refreshToken"]})
        assert after.status_code == 401 and after.json()["code"] == "TOKEN_REVOKED"
        me = await http.get("/me", headers={"Authorization": f"Bearer {rotated['accessToken']}"})
        assert me.status_code == 401 and me.json()["code"] == "TOKEN_REVOKED"


async def test_parallel_guesses_cannot_pass_the_lockout(live_auth: LiveServer) -> None:
    limit = live_auth.runtime.settings.login_max_failures
    async with httpx.AsyncClient(base_url=live_auth.url, timeout=60) as http:
        await register(http, "brute@example.com")
        responses = await asyncio.gather(
            *(http.post("/login", json={"email": "brute@example.com", "password": f"guess-{i}"}) for i in range(20))
        )
        after = await http.post("/login", json={"email": "brute@example.com", "password": PASSWORD})
    codes = Counter(r.json()["code"] for r in responses)
    assert codes == {"INVALID_CREDENTIALS": limit, "TOO_MANY_LOGIN_ATTEMPTS": 20 - limit}
    assert after.status_code == 429
