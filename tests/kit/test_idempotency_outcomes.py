"""Idempotency-Key outcomes follow Stripe: once the work started, its answer (a 4xx refusal
included) is what every replay gets; validation failures, 429 and 5xx are not stored."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from aihub.kit.runtime import Runtime
from tests.conftest import Caller
from tests.core.credits.helpers import account, assert_error, assert_replays_byte_for_byte, grant, money


async def _audit_actions(rt: Runtime) -> list[str]:
    async with rt.engine.connect() as conn:
        return [row[0] for row in (await conn.execute(text("SELECT action FROM audit_logs"))).all()]


async def test_a_refused_deduct_replays_as_refused_after_a_top_up(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    body = {"userId": user.id, "amount": 50}
    first = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-402"))
    refused = assert_error(first, 402, "INSUFFICIENT_CREDITS")
    audit_before = await _audit_actions(runtime)
    await grant(client, runtime, user.id, 100)  # now it would succeed
    for _ in range(3):
        replay = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-402"))
        again = assert_error(replay, 402, "INSUFFICIENT_CREDITS")  # requestId is the replay's own
        assert replay.headers["idempotent-replayed"] == "true"
        assert again["details"] == refused["details"] and again["message"] == refused["message"]
        assert again["requestId"] != refused["requestId"]
    assert await account(runtime, user.id) == (100, 0, 100)  # nothing was taken
    # The refusal wrote nothing of its own: only the grant's audit row came after it.
    assert [a for a in await _audit_actions(runtime) if a not in audit_before] == ["credits.purchase"]
    # The same key with another request is still a reuse; a new key runs the work.
    other = await client.post("/api/credits/deduct", json={**body, "amount": 5}, headers=money(runtime, key="k-402"))
    assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
    fresh = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-new"))
    assert fresh.status_code == 201, fresh.text
    assert await account(runtime, user.id) == (50, 0, 50)


async def test_a_replay_answers_the_first_answers_bytes(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    """The request path (SQLite): the endpoint returns what it made for its response model, and
    the body stored under the key is that serialisation, byte for byte."""
    await assert_replays_byte_for_byte(client, runtime, user.id)


async def test_other_refusals_of_started_work_are_stored_too(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    tx = await grant(client, runtime, user.id, 10)
    # 422 NOT_A_DEBIT decided by the service (the request itself was valid): final.
    refund = {"transactionId": tx["id"]}
    first = await client.post("/api/credits/refund", json=refund, headers=money(runtime, key="k-422"))
    assert_error(first, 422, "NOT_A_DEBIT")
    replay = await client.post("/api/credits/refund", json=refund, headers=money(runtime, key="k-422"))
    assert_error(replay, 422, "NOT_A_DEBIT")
    assert replay.headers["idempotent-replayed"] == "true"
    # 409: a hold captured once, then a second capture with one key, replayed.
    hold = (
        await client.post("/api/credits/holds", json={"userId": user.id, "amount": 4}, headers=money(runtime))
    ).json()
    url = f"/api/credits/holds/{hold['id']}/capture"
    assert (await client.post(url, headers=money(runtime, key="cap-1"))).status_code == 201
    for _ in range(2):
        response = await client.post(url, headers=money(runtime, key="cap-2"))
        assert_error(response, 409, "HOLD_NOT_ACTIVE")
    assert response.headers["idempotent-replayed"] == "true"


async def test_validation_failures_are_not_stored(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await grant(client, runtime, user.id, 10)
    for bad in ({"userId": user.id, "amount": 0}, {"userId": user.id, "amount": "3"}, {"userId": "nope", "amount": 3}):
        response = await client.post("/api/credits/deduct", json=bad, headers=money(runtime, key="k-val"))
        assert_error(response, 422, "VALIDATION_ERROR")
        assert "idempotent-replayed" not in response.headers
    # The key was never claimed: the corrected request runs under it.
    good = await client.post(
        "/api/credits/deduct", json={"userId": user.id, "amount": 3}, headers=money(runtime, key="k-val")
    )
    assert good.status_code == 201, good.text
    assert "idempotent-replayed" not in good.headers
    assert await account(runtime, user.id) == (7, 0, 7)


async def test_server_errors_are_not_stored(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    """A 5xx (here a real database failure mid-request) leaves the key free for the retry."""
    await grant(client, runtime, user.id, 10)
    async with runtime.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE credit_transactions RENAME COLUMN metadata TO metadata_gone"))
    body = {"userId": user.id, "amount": 3}
    failed = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-500"))
    assert_error(failed, 500, "INTERNAL_ERROR")
    async with runtime.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE credit_transactions RENAME COLUMN metadata_gone TO metadata"))
    retry = await client.post("/api/credits/deduct", json=body, headers=money(runtime, key="k-500"))
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers
    assert await account(runtime, user.id) == (7, 0, 7)


async def test_rate_limited_redemptions_are_not_stored(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    """429 says "try later", not "this is the answer": the key stays free."""
    limit = runtime.settings.promo_max_failures_per_user
    for i in range(limit):
        response = await client.post(
            "/api/promo-codes/redeem", json={"code": f"NOPE-{i}"}, headers={**user.headers, "Idempotency-Key": f"n{i}"}
        )
        assert_error(response, 404, "PROMO_NOT_FOUND")
    headers = {**user.headers, "Idempotency-Key": "late"}
    limited = await client.post("/api/promo-codes/redeem", json={"code": "LATER"}, headers=headers)
    assert_error(limited, 429, "PROMO_RATE_LIMITED")
    assert "retry-after" in limited.headers
    again = await client.post("/api/promo-codes/redeem", json={"code": "LATER"}, headers=headers)
    assert_error(again, 429, "PROMO_RATE_LIMITED")
    assert "idempotent-replayed" not in again.headers
    # A stored 404 replays as 404 without counting another failure.
    replay = await client.post(
        "/api/promo-codes/redeem", json={"code": "NOPE-0"}, headers={**user.headers, "Idempotency-Key": "n0"}
    )
    assert_error(replay, 404, "PROMO_NOT_FOUND")
    assert replay.headers["idempotent-replayed"] == "true"
