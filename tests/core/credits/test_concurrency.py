"""Concurrency on PostgreSQL through a real uvicorn server: the ledger never overdraws."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aihub.kit.runtime import Runtime
from tests.conftest import LiveServer, create_user
from tests.core.credits.helpers import account, assert_reconciled, money

pytestmark = pytest.mark.postgres


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def _funded(live: LiveServer, amount: int) -> str:
    user = await create_user(live.runtime)
    async with aiohttp.ClientSession() as http:
        status, _ = await _post(
            http, f"{live.url}/api/credits/grant", {"userId": user.id, "amount": amount}, money(live.runtime)
        )
    assert status == 201
    return user.id


async def test_500_concurrent_deductions_against_300(live_core: LiveServer) -> None:
    rt = live_core.runtime
    user_id = await _funded(live_core, 300)
    headers = money(rt)
    url = f"{live_core.url}/api/credits/deduct"
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as http:
        results = await asyncio.gather(
            *(_post(http, url, {"userId": user_id, "amount": 1, "reason": "usage"}, headers) for _ in range(500))
        )
    statuses = [status for status, _ in results]
    assert statuses.count(201) == 300
    assert statuses.count(402) == 200
    assert all(body["code"] == "INSUFFICIENT_CREDITS" for status, body in results if status == 402)
    assert await account(rt, user_id) == (0, 0, 0)
    await assert_reconciled(rt)


async def test_concurrent_duplicates_move_money_once(live_core: LiveServer) -> None:
    rt = live_core.runtime
    user_id = await _funded(live_core, 100)
    url = f"{live_core.url}/api/credits/deduct"
    body = {"userId": user_id, "amount": 10}
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(_post(http, url, body, money(rt, key="dup")) for _ in range(20)))
    ok = [b for s, b in results if s == 201]
    # The losers wait for the winner's commit and replay it (or, rarely, see it in flight).
    assert all(s in (201, 409) for s, _ in results), results
    assert ok and all(b == ok[0] for b in ok)
    assert await account(rt, user_id) == (90, 0, 90)


async def _mix(live: LiveServer, user_id: str, ops: list[tuple[str, int]]) -> None:
    rt = live.runtime
    base = f"{live.url}/api/credits"
    headers = money(rt)
    debits: list[str] = []

    async def one(http: aiohttp.ClientSession, op: str, amount: int) -> None:
        if op == "deduct":
            status, body = await _post(http, f"{base}/deduct", {"userId": user_id, "amount": amount}, headers)
            if status == 201:
                debits.append(body["id"])
        elif op == "grant":
            await _post(http, f"{base}/grant", {"userId": user_id, "amount": amount}, headers)
        elif op in ("hold_capture", "hold_release"):
            status, body = await _post(http, f"{base}/holds", {"userId": user_id, "amount": amount}, headers)
            if status == 201:
                if op == "hold_capture":
                    charge = {"amount": max(1, amount // 2)}
                    # Two racing captures: exactly one may win.
                    a, b = await asyncio.gather(
                        _post(http, f"{base}/holds/{body['id']}/capture", charge, headers),
                        _post(http, f"{base}/holds/{body['id']}/capture", charge, headers),
                    )
                    assert sorted([a[0], b[0]]) == [201, 409], (a, b)
                    debits.append(a[1]["id"] if a[0] == 201 else b[1]["id"])
                else:
                    await _post(http, f"{base}/holds/{body['id']}/release", None, headers)
        elif op == "refund" and debits:
            await _post(http, f"{base}/refund", {"transactionId": random.choice(debits)}, headers)
        balance, reserved, total = await account(rt, user_id)
        assert balance >= 0 and 0 <= reserved <= balance

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http, op, amount) for op, amount in ops))
        # Refunds racing on the same debit: the sum never exceeds it.
        if debits:
            target = debits[0]
            await asyncio.gather(
                *(_post(http, f"{base}/refund", {"transactionId": target, "amount": 1}, headers) for _ in range(8))
            )
    balance, reserved, total = await account(rt, user_id)
    assert balance >= 0 and reserved == 0 and balance == total
    await assert_reconciled(rt)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["deduct", "grant", "hold_capture", "hold_release", "refund"]),
        st.integers(min_value=1, max_value=40),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, start=st.integers(min_value=0, max_value=200))
async def test_concurrent_mixes_keep_the_invariants(
    live_core: LiveServer, ops: list[tuple[str, int]], start: int
) -> None:
    """Property-based: any mix, run all at once, keeps balance >= 0 and reserved <= balance
    throughout, and ends with balance == sum(ledger), reserved == 0, reconcile clean."""
    user_id = await _funded(live_core, start) if start else (await create_user(live_core.runtime)).id
    await _mix(live_core, user_id, ops)
