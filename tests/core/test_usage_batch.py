"""POST /api/usage/events/batch through the HTTP stack, on both backends."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
from sqlalchemy import select

from aihub.core.usage import rollups
from aihub.kit.runtime import Runtime
from aihub.models import UsageEvent
from tests.conftest import Caller
from tests.core.test_usage import count, event, fund, reporter
from tests.core.test_users import assert_error

URL = "/api/usage/events/batch"


async def test_events_are_independent_and_answered_in_order(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 30)
    events = [
        event(user, "b-1"),  # 13 credits → 17
        event(user, "b-2", model="no-such-model"),
        event(user, "b-3"),  # 13 → 4
        event(user, "b-4"),  # 13 > 4: refused, its neighbours stand
        {**event(user, "b-5"), "userId": str(uuid.uuid4())},
        event(user, "b-6", inputTokens=100, outputTokens=0),  # 1 → 3
    ]
    response = await client.post(URL, headers=reporter(runtime), json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["requestId"], r["status"], r.get("code")) for r in results] == [
        ("b-1", 201, None),
        ("b-2", 422, "UNKNOWN_MODEL"),
        ("b-3", 201, None),
        ("b-4", 402, "INSUFFICIENT_CREDITS"),
        ("b-5", 404, "ACCOUNT_NOT_FOUND"),
        ("b-6", 201, None),
    ]
    assert [r.get("balance") for r in results if r["status"] == 201] == [17, 4, 3]
    assert [r.get("credits") for r in results if r["status"] == 201] == [13, 13, 1]
    assert await count(runtime, UsageEvent) == 3
    assert (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"] == 3


async def test_replays_return_the_first_result_and_charge_once(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 100)
    headers = reporter(runtime)
    single = await client.post("/api/usage/events", headers=headers, json=event(user, "r-0"))
    assert single.status_code == 201
    first = await client.post(URL, headers=headers, json={"events": [event(user, "r-1"), event(user, "r-0")]})
    again = await client.post(
        URL,
        headers=headers,
        json={"events": [event(user, "r-1"), event(user, "r-1"), event(user, "r-1", inputTokens=5)]},
    )
    one, zero = first.json()["results"]
    assert one["status"] == 201
    assert zero["status"] == 200 and zero["id"] == single.json()["id"] and zero["balance"] == 87
    replays = again.json()["results"]
    assert [r["status"] for r in replays] == [200, 200, 422]
    assert replays[2]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert all(r["id"] == one["id"] and r["balance"] == one["balance"] for r in replays[:2])
    assert await count(runtime, UsageEvent) == 2
    assert (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"] == 74


async def test_batch_validation_and_size(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    headers = reporter(runtime)
    for bad in (
        {"events": [{**event(user), "inputTokens": -1}]},
        {"events": [{**event(user), "occurredAt": 1700000000}]},
        {"events": [{**event(user), "occurredAt": "yesterday"}]},
        {"events": "nope"},
        {},
        {"events": [], "surprise": 1},
    ):
        assert_error(await client.post(URL, headers=headers, json=bad), 422, "VALIDATION_ERROR")
    too_many = {"events": [event(user, f"m-{n}", inputTokens=0, outputTokens=0) for n in range(1001)]}
    body = assert_error(await client.post(URL, headers=headers, json=too_many), 413, "BATCH_TOO_LARGE")
    assert body["details"] == {"max": 1000, "received": 1001}
    huge = {"events": [event(user, f"h-{n}", metadata={"x": "y" * 2000}) for n in range(600)]}
    assert_error(await client.post(URL, headers=headers, json=huge), 413, "PAYLOAD_TOO_LARGE")
    assert_error(await client.post(URL, json={"events": []}), 401, "UNAUTHORIZED")
    assert_error(await client.post(URL, headers=user.headers, json={"events": []}), 403, "FORBIDDEN")
    empty = await client.post(URL, headers=headers, json={"events": []})
    assert empty.status_code == 200 and empty.json() == {"results": []}
    assert await count(runtime, UsageEvent) == 0


async def test_occurred_at_counts_toward_its_day(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 1000)
    headers = reporter(runtime)
    now = dt.datetime.now(dt.UTC)
    three_days_ago = now - dt.timedelta(days=3)
    created = await client.put("/api/quotas/role:user", headers=admin.headers, json={"period": "day", "maxRequests": 1})
    assert created.status_code == 201
    events = [
        event(user, "o-past", occurredAt=three_days_ago.isoformat()),
        event(user, "o-now"),
        event(user, "o-now-2"),  # today's quota (1 request) is used by o-now
        event(user, "o-past-2", occurredAt=(three_days_ago + dt.timedelta(minutes=1)).isoformat()),  # that day's too
        event(user, "o-old", occurredAt=(now - dt.timedelta(days=8)).isoformat()),
        event(user, "o-future", occurredAt=(now + dt.timedelta(hours=1)).isoformat()),
    ]
    results = (await client.post(URL, headers=headers, json={"events": events})).json()["results"]
    assert [(r["status"], r.get("code")) for r in results] == [
        (201, None),
        (201, None),
        (429, "QUOTA_EXCEEDED"),
        (429, "QUOTA_EXCEEDED"),
        (422, "OCCURRED_AT_OUT_OF_RANGE"),
        (422, "OCCURRED_AT_OUT_OF_RANGE"),
    ]
    tx = runtime.tx()
    try:
        stored = (await tx.session.execute(select(UsageEvent).where(UsageEvent.request_id == "o-past"))).scalar_one()
    finally:
        await tx.close()
    assert stored.created_at.date() == three_days_ago.date()
    day = three_days_ago.date().isoformat()
    summary = await client.get(
        "/api/usage/summary",
        headers=user.headers,
        params={"groupBy": "day", "from": f"{day}T00:00:00Z", "to": (now + dt.timedelta(hours=2)).isoformat()},
    )
    assert summary.status_code == 200, summary.text
    days = {item["key"]: item["requests"] for item in summary.json()["items"]}
    assert days[day] == 1
    assert days[now.date().isoformat()] == 1


async def test_a_backdated_event_reaches_a_day_already_rolled_up(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 1000)
    headers = reporter(runtime)
    now = dt.datetime.now(dt.UTC)
    past = now - dt.timedelta(days=2)
    early = await client.post(URL, headers=headers, json={"events": [event(user, "d-1", occurredAt=past.isoformat())]})
    assert early.json()["results"][0]["status"] == 201
    tx = runtime.tx()
    try:  # the nightly job: that day rolled up, the mark moved to today
        await rollups.recompute_day(tx.session, past.date())
        await rollups.advance(tx.session, now.date())
        await tx.commit()
    finally:
        await tx.close()
    late = await client.post(
        URL,
        headers=headers,
        json={"events": [event(user, "d-2", occurredAt=(past + dt.timedelta(seconds=1)).isoformat())]},
    )
    assert late.json()["results"][0]["status"] == 201
    day = past.date().isoformat()
    summary = await client.get(
        "/api/usage/summary",
        headers=user.headers,
        params={"groupBy": "day", "from": f"{day}T00:00:00Z", "to": f"{now.date().isoformat()}T00:00:00Z"},
    )
    assert {item["key"]: item["requests"] for item in summary.json()["items"]} == {day: 2}
