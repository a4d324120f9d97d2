"""The ledger's functional suite through the HTTP stack, on PostgreSQL + Redis and SQLite + memory."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from aihub.core.credits import service as credits
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user
from tests.core.credits.helpers import account, assert_error, assert_reconciled, grant, money, service_headers


async def test_new_account_is_empty(client: httpx.AsyncClient, user: Caller) -> None:
    response = await client.get("/api/credits/balance", headers=user.headers)
    assert response.status_code == 200
    assert response.json() == {"userId": user.id, "balance": 0, "reserved": 0, "available": 0}


async def test_grant_then_deduct(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    tx = await grant(client, runtime, user.id, 100)
    assert tx["amount"] == 100
    assert tx["type"] == "credit"
    assert tx["balanceAfter"] == 100
    assert tx["reason"] == "purchase"
    assert tx["userId"] == user.id
    response = await client.post(
        "/api/credits/deduct",
        json={"userId": user.id, "amount": 30, "reason": "usage", "metadata": {"model": "gpt"}},
        headers=money(runtime),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["amount"] == -30
    assert body["type"] == "debit"
    assert body["balanceAfter"] == 70
    assert body["metadata"] == {"model": "gpt"}
    assert set(body) >= {"id", "userId", "amount", "type", "reason", "balanceAfter", "metadata", "createdAt"}
    assert await account(runtime, user.id) == (70, 0, 70)
    await assert_reconciled(runtime)


async def test_deduct_more_than_available_is_402(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 10)
    response = await client.post(
        "/api/credits/deduct",
        json={"userId": user.id, "amount": 11, "reason": "usage"},
        headers=money(runtime),
    )
    body = assert_error(response, 402, "INSUFFICIENT_CREDITS")
    assert body["details"]["balance"] == 10
    assert body["details"]["required"] == 11
    assert await account(runtime, user.id) == (10, 0, 10)


async def test_unknown_account_is_404(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ghost = str(uuid.uuid4())
    for path in ("/api/credits/deduct", "/api/credits/grant"):
        response = await client.post(path, json={"userId": ghost, "amount": 1}, headers=money(runtime))
        assert_error(response, 404, "ACCOUNT_NOT_FOUND")
    assert_error(await client.get(f"/api/credits/accounts/{ghost}", headers=money(runtime)), 404, "ACCOUNT_NOT_FOUND")
    assert_error(
        await client.post("/api/credits/holds", json={"userId": ghost, "amount": 1}, headers=money(runtime)),
        404,
        "ACCOUNT_NOT_FOUND",
    )


async def test_history_filters_and_pages(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 50)
    for _ in range(3):
        r = await client.post("/api/credits/deduct", json={"userId": user.id, "amount": 1}, headers=money(runtime))
        assert r.status_code == 201
    first = await client.get("/api/credits/transactions?limit=2", headers=user.headers)
    assert first.status_code == 200
    page = first.json()
    assert len(page["items"]) == 2
    assert page["nextCursor"]
    rest = await client.get(f"/api/credits/transactions?limit=10&cursor={page['nextCursor']}", headers=user.headers)
    ids = [t["id"] for t in page["items"]] + [t["id"] for t in rest.json()["items"]]
    assert len(ids) == len(set(ids)) == 4
    usage = await client.get("/api/credits/transactions?reason=usage", headers=user.headers)
    assert [t["reason"] for t in usage.json()["items"]] == ["usage"] * 3
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    later = await client.get("/api/credits/transactions", params={"from": future}, headers=user.headers)
    assert later.json()["items"] == []
    admin_view = await client.get(f"/api/credits/accounts/{user.id}/transactions", headers=money(runtime))
    assert len(admin_view.json()["items"]) == 4


async def test_admin_reads_any_account(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    manager = await create_user(runtime, roles=["manager"])  # manager holds credits:read
    await grant(client, runtime, user.id, 5)
    response = await client.get(f"/api/credits/accounts/{user.id}", headers=manager.headers)
    assert response.json() == {"userId": user.id, "balance": 5, "reserved": 0, "available": 5}
    other = await create_user(runtime)
    assert_error(await client.get(f"/api/credits/accounts/{user.id}", headers=other.headers), 403, "FORBIDDEN")


async def test_check(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 20)
    mine = await client.post("/api/credits/check", json={"amount": 20}, headers=user.headers)
    assert mine.json() == {"sufficient": True, "balance": 20, "available": 20}
    more = await client.post("/api/credits/check", json={"amount": 21}, headers=user.headers)
    assert more.json()["sufficient"] is False
    other = await create_user(runtime)
    assert_error(
        await client.post("/api/credits/check", json={"userId": user.id, "amount": 1}, headers=other.headers),
        403,
        "FORBIDDEN",
    )
    by_service = await client.post("/api/credits/check", json={"userId": user.id, "amount": 1}, headers=money(runtime))
    assert by_service.json()["available"] == 20


async def test_refund_never_exceeds_the_debit(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 100)
    debit = (
        await client.post("/api/credits/deduct", json={"userId": user.id, "amount": 40}, headers=money(runtime))
    ).json()
    part = await client.post(
        "/api/credits/refund",
        json={"transactionId": debit["id"], "amount": 15, "reason": "bad output"},
        headers=money(runtime),
    )
    assert part.status_code == 201, part.text
    assert part.json()["amount"] == 15
    assert part.json()["reason"] == "refund"
    assert part.json()["relatedId"] == debit["id"]
    too_much = await client.post(
        "/api/credits/refund", json={"transactionId": debit["id"], "amount": 26}, headers=money(runtime)
    )
    assert_error(too_much, 409, "REFUND_EXCEEDS_DEBIT")
    rest = await client.post("/api/credits/refund", json={"transactionId": debit["id"]}, headers=money(runtime))
    assert rest.json()["amount"] == 25
    again = await client.post("/api/credits/refund", json={"transactionId": debit["id"]}, headers=money(runtime))
    assert_error(again, 409, "REFUND_EXCEEDS_DEBIT")
    credit_row = await grant(client, runtime, user.id, 1)
    assert_error(
        await client.post("/api/credits/refund", json={"transactionId": credit_row["id"]}, headers=money(runtime)),
        422,
        "NOT_A_DEBIT",
    )
    assert_error(
        await client.post("/api/credits/refund", json={"transactionId": str(uuid.uuid4())}, headers=money(runtime)),
        404,
        "TRANSACTION_NOT_FOUND",
    )
    assert await account(runtime, user.id) == (101, 0, 101)
    await assert_reconciled(runtime)


async def _hold(client: httpx.AsyncClient, rt: Runtime, user_id: str, amount: int, **extra: object) -> str:
    response = await client.post(
        "/api/credits/holds", json={"userId": user_id, "amount": amount, **extra}, headers=money(rt)
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "held"
    assert body["expiresAt"]
    return str(body["id"])


async def test_hold_capture_partly_releases_the_rest(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 100)
    hold_id = await _hold(client, runtime, user.id, 60)
    balance = (await client.get("/api/credits/balance", headers=user.headers)).json()
    assert balance == {"userId": user.id, "balance": 100, "reserved": 60, "available": 40}
    # Holds reduce available: a deduct beyond it is refused.
    short = await client.post("/api/credits/deduct", json={"userId": user.id, "amount": 41}, headers=money(runtime))
    assert_error(short, 402, "INSUFFICIENT_CREDITS")
    over = await client.post(f"/api/credits/holds/{hold_id}/capture", json={"amount": 61}, headers=money(runtime))
    assert_error(over, 422, "CAPTURE_EXCEEDS_HOLD")
    captured = await client.post(f"/api/credits/holds/{hold_id}/capture", json={"amount": 25}, headers=money(runtime))
    assert captured.status_code == 201, captured.text
    body = captured.json()
    assert body["amount"] == -25
    assert body["reason"] == "hold_capture"
    assert body["balanceAfter"] == 75
    assert await account(runtime, user.id) == (75, 0, 75)
    # A hold resolves once.
    twice = await client.post(f"/api/credits/holds/{hold_id}/capture", headers=money(runtime))
    assert_error(twice, 409, "HOLD_NOT_ACTIVE")
    after = await client.post(f"/api/credits/holds/{hold_id}/release", headers=money(runtime))
    assert_error(after, 409, "HOLD_NOT_ACTIVE")
    await assert_reconciled(runtime)


async def test_hold_full_capture_and_release(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 10)
    full = await _hold(client, runtime, user.id, 4)
    captured = await client.post(f"/api/credits/holds/{full}/capture", headers=money(runtime))
    assert captured.status_code == 201
    assert captured.json()["amount"] == -4
    released = await _hold(client, runtime, user.id, 6)
    response = await client.post(f"/api/credits/holds/{released}/release", headers=money(runtime))
    assert response.status_code == 200
    assert response.json()["id"] == released
    assert response.json()["status"] == "released"
    assert_error(
        await client.post(f"/api/credits/holds/{released}/capture", headers=money(runtime)),
        409,
        "HOLD_NOT_ACTIVE",
    )
    assert_error(
        await client.post(f"/api/credits/holds/{uuid.uuid4()}/release", headers=money(runtime)),
        404,
        "HOLD_NOT_FOUND",
    )
    assert await account(runtime, user.id) == (6, 0, 6)
    too_big = await client.post("/api/credits/holds", json={"userId": user.id, "amount": 7}, headers=money(runtime))
    assert_error(too_big, 402, "INSUFFICIENT_CREDITS")


async def test_expired_hold_cannot_be_captured_and_releases_itself(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await grant(client, runtime, user.id, 10)
    hold_id = await _hold(client, runtime, user.id, 8, ttlSeconds=1)
    await asyncio.sleep(1.1)
    late = await client.post(f"/api/credits/holds/{hold_id}/capture", headers=money(runtime))
    body = assert_error(late, 409, "HOLD_NOT_ACTIVE")
    assert body["details"] == {"status": "expired"}
    assert await account(runtime, user.id) == (10, 8, 10)  # still reserved until the sweep
    tx = runtime.tx()
    try:
        assert await credits.expire_holds(tx) == 1
        await tx.commit()
    finally:
        await tx.close()
    assert await account(runtime, user.id) == (10, 0, 10)
    assert_error(
        await client.post(f"/api/credits/holds/{hold_id}/release", headers=money(runtime)),
        409,
        "HOLD_NOT_ACTIVE",
    )
    await assert_reconciled(runtime)


async def test_idempotent_replay(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 100)
    body = {"userId": user.id, "amount": 7, "reason": "usage"}
    first = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-1"))
    second = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-1"))
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert first.json()["idempotencyKey"] == "k-1"
    assert second.headers.get("idempotent-replayed") == "true"
    assert await account(runtime, user.id) == (93, 0, 93)
    # Key order and spacing do not make another request.
    reordered = await client.post(
        "/api/credits/deduct",
        content=b'{"reason": "usage",   "amount": 7, "userId": "%s"}' % user.id.encode(),
        headers={**money(runtime, key="k-1"), "Content-Type": "application/json"},
    )
    assert reordered.json() == first.json()
    mismatch = await client.post("/api/credits/deduct", json={**body, "amount": 8}, headers=money(runtime, key="k-1"))
    assert_error(mismatch, 422, "IDEMPOTENCY_KEY_REUSED")
    # Another path with the same key is another request too.
    other_path = await client.post(
        "/api/credits/grant", json={"userId": user.id, "amount": 7}, headers=money(runtime, key="k-1")
    )
    assert_error(other_path, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await account(runtime, user.id) == (93, 0, 93)


async def test_idempotency_covers_holds_capture_release_refund(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await grant(client, runtime, user.id, 100)
    hold = {"userId": user.id, "amount": 30}
    h1 = await client.post("/api/credits/holds", json=hold, headers=money(runtime, key="h"))
    h2 = await client.post("/api/credits/holds", json=hold, headers=money(runtime, key="h"))
    assert h1.json() == h2.json()
    hold_id = h1.json()["id"]
    c1 = await client.post(
        f"/api/credits/holds/{hold_id}/capture", json={"amount": 10}, headers=money(runtime, key="c")
    )
    c2 = await client.post(
        f"/api/credits/holds/{hold_id}/capture", json={"amount": 10}, headers=money(runtime, key="c")
    )
    assert c1.status_code == c2.status_code == 201
    assert c1.json() == c2.json()
    r1 = await client.post(
        "/api/credits/refund", json={"transactionId": c1.json()["id"]}, headers=money(runtime, key="r")
    )
    r2 = await client.post(
        "/api/credits/refund", json={"transactionId": c1.json()["id"]}, headers=money(runtime, key="r")
    )
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json()
    h3 = await client.post("/api/credits/holds", json=hold, headers=money(runtime, key="h3"))
    rel1 = await client.post(f"/api/credits/holds/{h3.json()['id']}/release", headers=money(runtime, key="rel"))
    rel2 = await client.post(f"/api/credits/holds/{h3.json()['id']}/release", headers=money(runtime, key="rel"))
    assert rel1.status_code == rel2.status_code == 200
    assert rel1.json() == rel2.json()
    assert await account(runtime, user.id) == (100, 0, 100)
    await assert_reconciled(runtime)


async def test_a_refusal_is_final_for_its_key(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    """Stripe's rule (kit.idempotency): the 402 is what the key answers, even after a top-up;
    the retry of a new operation takes a new key."""
    body = {"userId": user.id, "amount": 5}
    first = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="retry-me"))
    assert_error(first, 402, "INSUFFICIENT_CREDITS")
    await grant(client, runtime, user.id, 5)
    second = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="retry-me"))
    assert_error(second, 402, "INSUFFICIENT_CREDITS")
    third = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="retry-me-2"))
    assert third.status_code == 201


async def test_keys_are_per_caller(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 10)
    body = {"userId": user.id, "amount": 1}
    one = service_headers(runtime, "credits:deduct", key="shared")
    token = runtime.codec.issue(sub="svc-other", typ="service", role="service", scopes=["credits:deduct"])
    two = {"Authorization": f"Bearer {token}", "Idempotency-Key": "shared"}
    assert (await client.post("/api/credits/deduct", json=body, headers=one)).status_code == 201
    assert (await client.post("/api/credits/deduct", json=body, headers=two)).status_code == 201
    assert await account(runtime, user.id) == (8, 0, 8)


def _db_id(rt: Runtime, value: str) -> object:
    # Raw SQL sees the stored form: a native uuid on PostgreSQL, 32 hex digits on SQLite.
    return uuid.UUID(value).hex if rt.settings.is_sqlite else uuid.UUID(value)


async def test_ledger_rows_cannot_be_updated_or_deleted(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    """PostgreSQL: a trigger; SQLite: a RAISE(ABORT) trigger. Either way the row stands."""
    row = await grant(client, runtime, user.id, 3)
    for statement in (
        "UPDATE credit_transactions SET amount = 1000 WHERE id = :id",
        "DELETE FROM credit_transactions WHERE id = :id",
    ):
        async with runtime.engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement), {"id": _db_id(runtime, row["id"])})
            await conn.rollback()
    assert await account(runtime, user.id) == (3, 0, 3)


async def test_money_moves_write_audit_rows(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 3)
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT action, actor_type FROM audit_logs WHERE entity_type = 'credit_account' AND entity_id = :u"
                ),
                {"u": user.id},
            )
        ).all()
    assert [(r[0], r[1]) for r in rows] == [("credits.purchase", "service")]
