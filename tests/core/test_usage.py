"""Usage events, quotas and queries through the HTTP stack (both backends), races on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from aihub.core.credits import service as credits
from aihub.kit.runtime import Runtime
from aihub.models import CreditTransaction, UsageEvent
from tests.conftest import Caller, LiveServer, create_user
from tests.core.test_users import assert_error


async def fund(rt: Runtime, user_id: str, amount: int) -> None:
    tx = rt.tx()
    try:
        await credits.grant(tx, uuid.UUID(user_id), amount, reason="purchase")
        await tx.commit()
    finally:
        await tx.close()


def reporter(rt: Runtime) -> dict[str, str]:
    token = rt.codec.issue(sub="svc-mcp", typ="service", role="service", scopes=["usage:write"], ttl=None)
    return {"Authorization": f"Bearer {token}"}


def event(user: Caller, request_id: str | None = None, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "requestId": request_id or uuid.uuid4().hex,
        "userId": user.id,
        "provider": "openai",
        "model": "gpt-4o",
        "inputTokens": 1000,
        "outputTokens": 1000,
    }
    body.update(extra)
    return body


async def count(rt: Runtime, model: type, *where: ColumnElement[bool]) -> int:
    tx = rt.tx()
    try:
        return int((await tx.session.execute(select(func.count()).select_from(model).where(*where))).scalar_one())
    finally:
        await tx.close()


async def test_event_is_priced_and_charged(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 100)
    response = await client.post("/api/usage/events", headers=reporter(runtime), json=event(user, "req-1"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["credits"] == 13  # 2.5 + 10 per 1k, rounded up
    assert body["balance"] == 87
    assert body["requestId"] == "req-1"
    balance = (await client.get("/api/credits/balance", headers=user.headers)).json()
    assert balance["balance"] == 87
    listed = (await client.get("/api/usage", headers=user.headers)).json()["items"]
    assert [(e["requestId"], e["credits"], e["inputTokens"]) for e in listed] == [("req-1", 13, 1000)]
    assert listed[0]["transactionId"] is not None


async def test_replay_charges_once_and_mismatch_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 100)
    first = await client.post("/api/usage/events", headers=reporter(runtime), json=event(user, "same"))
    again = await client.post("/api/usage/events", headers=reporter(runtime), json=event(user, "same"))
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    other = await client.post("/api/usage/events", headers=reporter(runtime), json=event(user, "same", inputTokens=5))
    assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")
    assert (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"] == 87
    assert await count(runtime, UsageEvent) == 1


async def test_refusals_leave_nothing_behind(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 5)
    headers = reporter(runtime)
    assert_error(await client.post("/api/usage/events", headers=headers, json=event(user)), 402, "INSUFFICIENT_CREDITS")
    assert_error(
        await client.post("/api/usage/events", headers=headers, json=event(user, model="no-such-model")),
        422,
        "UNKNOWN_MODEL",
    )
    stranger = {**event(user), "userId": str(uuid.uuid4())}
    assert_error(await client.post("/api/usage/events", headers=headers, json=stranger), 404, "ACCOUNT_NOT_FOUND")
    assert await count(runtime, UsageEvent) == 0
    # Now it fits: the same requestId that failed may be retried.
    ok = await client.post("/api/usage/events", headers=headers, json=event(user, inputTokens=100, outputTokens=0))
    assert ok.status_code == 201 and ok.json()["credits"] == 1


async def test_zero_tokens_are_free_unless_per_request(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 10)
    free = await client.post(
        "/api/usage/events", headers=reporter(runtime), json=event(user, inputTokens=0, outputTokens=0)
    )
    assert free.json()["credits"] == 0 and free.json()["balance"] == 10
    await client.put(
        "/api/pricing/acme/tool", headers=admin.headers, json={"inputPer1k": 0, "outputPer1k": 0, "perRequest": 1.5}
    )
    paid = await client.post(
        "/api/usage/events",
        headers=reporter(runtime),
        json=event(user, provider="acme", model="tool", inputTokens=0, outputTokens=0),
    )
    assert paid.json()["credits"] == 2
    video = await client.post(
        "/api/usage/events",
        headers=reporter(runtime),
        json=event(user, model="sora2", inputTokens=0, outputTokens=0, durationSeconds=0.05),
    )
    assert video.json()["credits"] == 5  # 100 credits per second


async def test_event_validation_and_permissions(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    headers = reporter(runtime)
    for bad in (
        {**event(user), "inputTokens": -1},
        {**event(user), "requestId": ""},
        {**event(user), "requestId": "has space"},
        {**event(user), "userId": "nope"},
        {**event(user), "durationSeconds": -1},
        {**event(user), "metadata": {"x": "y" * 9000}},
        {**event(user), "surprise": True},
        {k: v for k, v in event(user).items() if k != "model"},
    ):
        assert_error(await client.post("/api/usage/events", headers=headers, json=bad), 422, "VALIDATION_ERROR")
    assert_error(await client.post("/api/usage/events", json=event(user)), 401, "UNAUTHORIZED")
    assert_error(await client.post("/api/usage/events", headers=user.headers, json=event(user)), 403, "FORBIDDEN")


async def test_quota_role_and_user_limits_stack(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 1000)
    assert (await client.get("/api/usage/quota", headers=user.headers)).json()["scope"] is None
    created = await client.put("/api/quotas/role:user", headers=admin.headers, json={"period": "day", "maxRequests": 2})
    assert created.status_code == 201
    headers = reporter(runtime)
    for _ in range(2):
        assert (await client.post("/api/usage/events", headers=headers, json=event(user))).status_code == 201
    over = await client.post("/api/usage/events", headers=headers, json=event(user))
    body = assert_error(over, 429, "QUOTA_EXCEEDED")
    assert body["details"]["scope"] == "role:user"  # type: ignore[index]
    mine = (await client.get("/api/usage/quota", headers=user.headers)).json()
    assert mine["limits"]["requests"] == 2 and mine["used"]["requests"] == 2 and mine["remaining"]["requests"] == 0
    # Limits stack: a user's own limit narrows the role's, never widens it.
    await client.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json={"period": "month", "maxCredits": 40})
    still = assert_error(
        await client.post("/api/usage/events", headers=headers, json=event(user)), 429, "QUOTA_EXCEEDED"
    )
    assert still["details"]["scope"] == "role:user"  # type: ignore[index]
    assert (await client.delete("/api/quotas/role:user", headers=admin.headers)).status_code == 204
    # The user's month already holds the 26 credits spent before its quota existed.
    assert (await client.post("/api/usage/events", headers=headers, json=event(user))).status_code == 201  # 39
    mine = assert_error(
        await client.post("/api/usage/events", headers=headers, json=event(user)), 429, "QUOTA_EXCEEDED"
    )
    assert mine["details"]["scope"] == f"user:{user.id}"  # type: ignore[index]
    assert (await client.get(f"/api/quotas/user:{user.id}", headers=admin.headers)).json()["maxCredits"] == 40
    assert (await client.delete(f"/api/quotas/user:{user.id}", headers=admin.headers)).status_code == 204
    assert_error(await client.get(f"/api/quotas/user:{user.id}", headers=admin.headers), 404, "QUOTA_NOT_FOUND")
    assert_error(
        await client.put("/api/quotas/team:x", headers=admin.headers, json={"period": "day"}), 422, "VALIDATION_ERROR"
    )
    assert_error(
        await client.put("/api/quotas/role:user", headers=user.headers, json={"period": "day"}), 403, "FORBIDDEN"
    )


async def test_summary_and_access_rules(
    client: httpx.AsyncClient, runtime: Runtime, manager: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 1000)
    headers = reporter(runtime)
    await client.post("/api/usage/events", headers=headers, json=event(user))
    await client.post("/api/usage/events", headers=headers, json=event(user, model="gpt-4o-mini"))
    await client.post(
        "/api/usage/events", headers=headers, json=event(user, provider="anthropic", model="claude-sonnet-4")
    )
    by_provider = (await client.get("/api/usage/summary", headers=user.headers, params={"groupBy": "provider"})).json()
    assert {i["key"]: i["requests"] for i in by_provider["items"]} == {"anthropic": 1, "openai": 2}
    by_model = (await client.get("/api/usage/summary", headers=user.headers, params={"groupBy": "model"})).json()
    assert {i["key"] for i in by_model["items"]} == {"openai/gpt-4o", "openai/gpt-4o-mini", "anthropic/claude-sonnet-4"}
    by_day = (await client.get("/api/usage/summary", headers=user.headers, params={"groupBy": "day"})).json()["items"]
    assert len(by_day) == 1 and len(by_day[0]["key"]) == 10 and by_day[0]["requests"] == 3
    # Per day and model (the console's usage chart): the day, then provider/model.
    split = (await client.get("/api/usage/summary", headers=user.headers, params={"groupBy": "day_model"})).json()
    day = by_day[0]["key"]
    assert {i["key"]: i["requests"] for i in split["items"]} == {
        f"{day}/anthropic/claude-sonnet-4": 1,
        f"{day}/openai/gpt-4o": 1,
        f"{day}/openai/gpt-4o-mini": 1,
    }
    assert sum(i["credits"] for i in split["items"]) == by_day[0]["credits"]
    total = sum(i["credits"] for i in by_provider["items"])
    assert total == 1000 - (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"]
    # Others' usage needs usage:read (a manager has it, a plain user does not).
    assert_error(await client.get("/api/usage", headers=user.headers, params={"userId": manager.id}), 403, "FORBIDDEN")
    seen = (await client.get("/api/usage", headers=manager.headers, params={"userId": user.id})).json()["items"]
    assert len(seen) == 3
    assert_error(
        await client.get("/api/usage/summary", headers=user.headers, params={"groupBy": "week"}),
        422,
        "VALIDATION_ERROR",
    )


async def test_concurrent_duplicates_charge_once(live_core: LiveServer) -> None:
    rt = live_core.runtime
    user = await create_user(rt)
    await fund(rt, user.id, 1000)
    async with httpx.AsyncClient(base_url=live_core.url, headers=reporter(rt), timeout=60) as c:
        results = await asyncio.gather(*(c.post("/api/usage/events", json=event(user, "dup-1")) for _ in range(50)))
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    assert await count(rt, UsageEvent) == 1
    assert await count(rt, CreditTransaction, CreditTransaction.reason == "usage") == 1


async def test_quota_race_passes_exactly_what_fits(live_core: LiveServer) -> None:
    rt = live_core.runtime
    admin = await create_user(rt, roles=["admin"])
    user = await create_user(rt)
    await fund(rt, user.id, 10_000)
    async with httpx.AsyncClient(base_url=live_core.url, timeout=60) as c:
        await c.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json={"period": "day", "maxRequests": 10})
        results = await asyncio.gather(
            *(c.post("/api/usage/events", headers=reporter(rt), json=event(user)) for _ in range(60))
        )
        balance = (await c.get("/api/credits/balance", headers=user.headers)).json()["balance"]
    codes = sorted(r.status_code for r in results)
    assert codes.count(201) == 10 and codes.count(429) == 50, codes
    assert balance == 10_000 - 10 * 13
    assert await count(rt, UsageEvent) == 10
