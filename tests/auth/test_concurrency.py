"""Races through a real uvicorn server on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from aihub.models import RefreshToken
from tests.auth.conftest import PASSWORD, login, register
from tests.conftest import LiveServer

pytestmark = pytest.mark.postgres


async def test_concurrent_refresh_with_one_token_has_one_winner(live_auth: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_auth.url, timeout=30) as http:
        await register(http, "race@example.com")
        session = await login(http, "race@example.com")
        responses = await asyncio.gather(
            *(http.post("/refresh", json={"refreshToken": session.refresh}) for _ in range(12))
        )
    statuses = Counter(r.status_code for r in responses)
    assert statuses[200] == 1, [r.text for r in responses]
    assert statuses[401] == 11
    assert {r.json()["code"] for r in responses if r.status_code == 401} == {"REFRESH_TOKEN_REUSED"}
    # The losers saw a spent token: the family, including the winner's new token, is revoked.
    tx = live_auth.runtime.tx()
    try:
        live = await tx.session.execute(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.revoked_at.is_(None))
        )
        spent = await tx.session.execute(
            select(func.count()).select_from(RefreshToken).where(RefreshToken.used_at.is_not(None))
        )
        assert live.scalar_one() == 0
        assert spent.scalar_one() == 1
    finally:
        await tx.close()


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
