"""The ledger engine on PostgreSQL: one batch, many outcomes; a bad move cannot fail its neighbours."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import aiohttp
import pytest

from aihub.core.credits import service as credits
from aihub.core.credits.repository import Entry
from aihub.core.ledger.engine import Move, Outcome
from aihub.kit.runtime import Runtime
from tests.conftest import LiveServer
from tests.core.credits.helpers import account, assert_reconciled, money
from tests.core.ledger.helpers import audit_valid, engine_of, funded, move

pytestmark = pytest.mark.postgres


def _move(user_id: str, amount: int, reason: str = "usage") -> Move:
    return move(user_id, amount, reason)


async def _funded(rt: Runtime, amount: int) -> str:
    return (await funded(rt, amount)).id


async def test_one_hot_account_in_one_batch_is_applied_in_order(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    user_id = await _funded(rt, 100)
    engine = engine_of(rt)
    outcomes = await asyncio.gather(*(engine.submit(_move(user_id, -n)) for n in (60, 50, 40, 1)))
    assert [o.status_code for o in outcomes] == [201, 402, 201, 402]
    assert isinstance(outcomes[1].error, credits.InsufficientCredits)
    assert outcomes[1].error.details == {"balance": 40, "available": 40, "required": 50}
    assert [o.view.balance_after for o in outcomes if isinstance(o.view, Entry)] == [40, 0]
    assert await account(rt, user_id) == (0, 0, 0)
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_a_missing_account_is_refused_alone(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    user_id = await _funded(rt, 10)
    engine = engine_of(rt)
    outcomes = await asyncio.gather(
        engine.submit(_move(user_id, -3)),
        engine.submit(_move(str(uuid.uuid4()), -3)),
        engine.submit(_move(user_id, 5, "promo")),
    )
    assert [o.status_code for o in outcomes] == [201, 404, 201]
    assert isinstance(outcomes[1].error, credits.AccountNotFound)
    assert await account(rt, user_id) == (12, 0, 12)


async def test_a_bad_move_fails_alone_when_the_batch_fails_as_a_whole(pg_runtime: Runtime) -> None:
    """A reason longer than its column makes the batch's INSERT fail: the batch is retried move
    by move, the bad one gets its error and every neighbour still commits."""
    rt = pg_runtime
    user_id = await _funded(rt, 100)
    engine = engine_of(rt)
    results: tuple[Outcome | BaseException, ...] = await asyncio.gather(
        engine.submit(_move(user_id, -10)),
        engine.submit(_move(user_id, -10, reason="x" * 40)),
        engine.submit(_move(user_id, -10)),
        return_exceptions=True,
    )
    good = [r for r in results if isinstance(r, Outcome)]
    assert [o.status_code for o in good] == [201, 201]
    assert isinstance(results[1], BaseException)
    assert await account(rt, user_id) == (80, 0, 80)
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]) -> int:
    async with http.post(url, json=body, headers=headers) as response:
        await response.read()
        return response.status


async def test_hot_account_with_mixed_amounts_never_overdraws(live_core: LiveServer) -> None:
    """Concurrent debits of 1..50 and grants of one account through the real HTTP stack."""
    rt = live_core.runtime
    user_id = await _funded(rt, 2_000)
    headers = money(rt)
    rng = random.Random(15)
    ops = [("deduct", rng.randint(1, 50)) for _ in range(300)] + [("grant", rng.randint(1, 30)) for _ in range(20)]
    rng.shuffle(ops)
    connector = aiohttp.TCPConnector(limit=40)
    async with aiohttp.ClientSession(connector=connector) as http:
        statuses = await asyncio.gather(
            *(
                _post(
                    http,
                    f"{live_core.url}/api/credits/{op}",
                    {"userId": user_id, "amount": amount, "reason": "usage" if op == "deduct" else "promo"},
                    headers,
                )
                for op, amount in ops
            )
        )
    assert set(statuses) <= {201, 402}, statuses
    assert all(s == 201 for (op, _), s in zip(ops, statuses, strict=True) if op == "grant")
    spent = sum(amount for (op, amount), s in zip(ops, statuses, strict=True) if op == "deduct" and s == 201)
    granted = sum(amount for op, amount in ops if op == "grant")
    assert statuses.count(402) > 0  # the account ran dry: the guard was exercised
    balance, reserved, total = await account(rt, user_id)
    assert balance == total == 2_000 + granted - spent
    assert balance >= 0
    assert reserved == 0
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_keyed_moves_in_one_batch_replay_and_refuse_reuse(live_core: LiveServer) -> None:
    rt = live_core.runtime
    user_id = await _funded(rt, 100)
    url = f"{live_core.url}/api/credits/deduct"
    async with aiohttp.ClientSession() as http:
        first = await asyncio.gather(
            *(_post(http, url, {"userId": user_id, "amount": 7}, money(rt, key=f"k{n}")) for n in range(5))
        )
        again = await asyncio.gather(
            *(_post(http, url, {"userId": user_id, "amount": 7}, money(rt, key=f"k{n}")) for n in range(5))
        )
        reused = await _post(http, url, {"userId": user_id, "amount": 8}, money(rt, key="k0"))
    assert first == again == [201] * 5
    assert reused == 422
    assert await account(rt, user_id) == (65, 0, 65)
