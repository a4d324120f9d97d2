"""Shared helpers of the ledger tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from aihub.core.credits.reconcile import reconcile
from aihub.core.credits.repository import accounts, ledger
from aihub.kit.runtime import Runtime


def service_headers(rt: Runtime, *scopes: str, key: str | None = None) -> dict[str, str]:
    """A service token (no DB row behind it), the realistic caller of deduct and holds."""
    token = rt.codec.issue(sub="svc-test", typ="service", role="service", scopes=list(scopes), ttl=None)
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def money(rt: Runtime, key: str | None = None) -> dict[str, str]:
    return service_headers(rt, "credits:grant", "credits:deduct", "credits:read", key=key)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    return dict(body)


async def grant(client: httpx.AsyncClient, rt: Runtime, user_id: str, amount: int) -> dict[str, Any]:
    response = await client.post(
        "/api/credits/grant",
        json={"userId": user_id, "amount": amount, "reason": "purchase"},
        headers=money(rt),
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def account(rt: Runtime, user_id: str) -> tuple[int, int, int]:
    """(balance, reserved, sum of ledger) straight from the database."""
    uid = uuid.UUID(user_id)
    async with rt.engine.connect() as conn:
        row = (
            await conn.execute(select(accounts.c.balance, accounts.c.reserved).where(accounts.c.user_id == uid))
        ).one()
        total = (
            await conn.execute(select(func.coalesce(func.sum(ledger.c.amount), 0)).where(ledger.c.user_id == uid))
        ).scalar_one()
    return int(row[0]), int(row[1]), int(total)


async def assert_reconciled(rt: Runtime) -> None:
    tx = rt.tx()
    try:
        report = await reconcile(tx)
    finally:
        await tx.close()
    assert report.ok, report.mismatches


async def assert_replays_byte_for_byte(client: httpx.AsyncClient, rt: Runtime, user_id: str) -> None:
    """A keyed grant, hold and release: each first answer went through its response model
    (exactly its fields, camelCase) and each replay answers those very bytes, marked replayed."""
    meta = {"note é ☃": "x", "n": 1.5e-7, "deep": {"list": [1, None, True]}}
    calls = [
        ("/api/credits/grant", {"userId": user_id, "amount": 40, "reason": "purchase", "note": "n", "metadata": meta}),
        ("/api/credits/holds", {"userId": user_id, "amount": 15, "ttlSeconds": 600, "metadata": meta}),
    ]
    answers = []
    for n, (path, body) in enumerate(calls):
        first = await client.post(path, json=body, headers=money(rt, key=f"bytes-{n}"))
        assert first.status_code == 201, first.text
        answers.append(first)
    hold_id = answers[1].json()["id"]
    calls.append((f"/api/credits/holds/{hold_id}/release", {}))
    release = await client.post(calls[2][0], headers=money(rt, key="bytes-2"))
    assert release.status_code == 200, release.text
    answers.append(release)
    assert list(answers[0].json()) == [
        "id",
        "userId",
        "accountId",
        "amount",
        "type",
        "reason",
        "balanceAfter",
        "relatedId",
        "idempotencyKey",
        "metadata",
        "createdAt",
    ]
    assert answers[0].json()["metadata"] == {**meta, "note": "n"}
    assert answers[2].json()["status"] == "released"
    for n, ((path, body), first) in enumerate(zip(calls, answers, strict=True)):
        assert "idempotent-replayed" not in first.headers
        replay = await client.post(path, json=body or None, headers=money(rt, key=f"bytes-{n}"))
        assert replay.headers["idempotent-replayed"] == "true"
        assert (replay.status_code, replay.content) == (first.status_code, first.content)
