"""Pre-call authorizations through core's HTTP stack on both backends: hold the worst case,
settle the actual (capped), cancel, expiry, and every refusal."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
from sqlalchemy import update

from aihub.core.authorizations import service as authorizations
from aihub.kit.runtime import Runtime
from aihub.models import UsageAuthorization
from tests.apikeys.test_keys import key_headers, make_key
from tests.conftest import Caller, create_user
from tests.core.credits.helpers import account, assert_reconciled
from tests.core.test_usage import fund, reporter
from tests.core.test_users import assert_error

# openai/gpt-4o is seeded at 2.5 credits per 1k input and 10 per 1k output tokens.
WORST = {"provider": "openai", "model": "gpt-4o", "maxInputTokens": 1000, "maxOutputTokens": 1000}
HELD = 13  # 2.5 + 10, rounded up


def settle_body(request_id: str | None = None, inp: int = 500, out: int = 500, **extra: Any) -> dict[str, Any]:
    return {"requestId": request_id or uuid.uuid4().hex, "inputTokens": inp, "outputTokens": out, **extra}


async def authorize(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await client.post("/api/usage/authorizations", headers=headers, json={**WORST, **body})


async def test_hold_the_worst_case_then_settle_the_actual_and_release_the_rest(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 100)
    response = await authorize(client, user.headers)
    assert response.status_code == 201, response.text
    auth = response.json()
    assert auth["heldCredits"] == HELD and auth["status"] == "active" and auth["userId"] == user.id
    assert await account(runtime, user.id) == (100, HELD, 100)  # held, not spent
    settled = await client.post(
        f"/api/usage/authorizations/{auth['id']}/settle", headers=user.headers, json=settle_body("call-1")
    )
    assert settled.status_code == 201, settled.text
    body = settled.json()
    assert (body["credits"], body["balance"], body["overrun"]) == (7, 93, False)  # 1.25 + 5 → 7
    assert body["authorizationId"] == auth["id"] and body["requestId"] == "call-1"
    assert await account(runtime, user.id) == (93, 0, 93)
    events = (await client.get("/api/usage", headers=user.headers)).json()["items"]
    assert [(e["id"], e["credits"], e["inputTokens"], e["outputTokens"]) for e in events] == [(body["id"], 7, 500, 500)]
    again = await client.post(
        f"/api/usage/authorizations/{auth['id']}/settle", headers=user.headers, json=settle_body("call-2")
    )
    assert assert_error(again, 409, "AUTHORIZATION_NOT_ACTIVE")["details"] == {"status": "settled"}
    cancel = await client.post(f"/api/usage/authorizations/{auth['id']}/cancel", headers=user.headers)
    assert_error(cancel, 409, "AUTHORIZATION_NOT_ACTIVE")
    read = (await client.get(f"/api/usage/authorizations/{auth['id']}", headers=user.headers)).json()
    assert read["status"] == "settled" and read["usageEventId"] == body["id"]
    await assert_reconciled(runtime)


async def test_settle_never_charges_more_than_held(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 100)
    auth = (await authorize(client, user.headers)).json()
    settled = await client.post(
        f"/api/usage/authorizations/{auth['id']}/settle", headers=user.headers, json=settle_body(inp=5000, out=5000)
    )
    assert settled.status_code == 201, settled.text
    assert (settled.json()["credits"], settled.json()["overrun"]) == (HELD, True)
    assert await account(runtime, user.id) == (100 - HELD, 0, 100 - HELD)


async def test_cancel_releases_everything(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 100)
    key = await make_key(client, user.headers, budget={"maxCredits": 20, "period": "day"})
    auth = (await authorize(client, key_headers(str(key["key"])))).json()
    assert auth["apiKeyId"] == key["id"]
    assert (await client.get(f"/api/keys/{key['id']}", headers=user.headers)).json()["budget"]["used"] == HELD
    cancelled = await client.post(
        f"/api/usage/authorizations/{auth['id']}/cancel", headers=key_headers(str(key["key"]))
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert await account(runtime, user.id) == (100, 0, 100)
    assert (await client.get(f"/api/keys/{key['id']}", headers=user.headers)).json()["budget"]["used"] == 0


async def test_each_refusal_code(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    broke = await create_user(runtime)
    assert_error(await authorize(client, broke.headers), 402, "INSUFFICIENT_CREDITS")
    caller = await create_user(runtime)
    await fund(runtime, caller.id, 1000)
    assert_error(await authorize(client, caller.headers, model="no-such-model"), 422, "UNKNOWN_MODEL")
    restricted = await make_key(client, caller.headers, models=["anthropic/*", "openai/gpt-4o-mini"])
    refused = await authorize(client, key_headers(str(restricted["key"])))
    assert_error(refused, 403, "MODEL_NOT_ALLOWED")
    allowed = await authorize(client, key_headers(str(restricted["key"])), model="gpt-4o-mini")
    assert allowed.status_code == 201, allowed.text
    budgeted = await make_key(client, caller.headers, budget={"maxCredits": HELD * 2, "period": "total"})
    headers = key_headers(str(budgeted["key"]))
    assert (await authorize(client, headers)).status_code == 201
    assert (await authorize(client, headers)).status_code == 201
    over = assert_error(await authorize(client, headers), 429, "KEY_BUDGET_EXCEEDED")
    assert over["details"]["maxCredits"] == HELD * 2  # type: ignore[index]
    tpm = await make_key(client, caller.headers, tokensPerMinute=3000)
    assert (await authorize(client, key_headers(str(tpm["key"])))).status_code == 201
    assert_error(await authorize(client, key_headers(str(tpm["key"]))), 429, "KEY_BUDGET_EXCEEDED")
    # 40 credits authorized so far today (1 for gpt-4o-mini, 3 x 13): a quota set now counts them.
    quota = await client.put(
        f"/api/quotas/user:{caller.id}", headers=admin.headers, json={"period": "day", "maxCredits": 52}
    )
    assert quota.status_code in (200, 201), quota.text
    assert_error(await authorize(client, caller.headers), 429, "QUOTA_EXCEEDED")
    small = await authorize(client, caller.headers, maxInputTokens=100, maxOutputTokens=100)  # 2 credits
    assert small.status_code == 201, small.text
    await assert_reconciled(runtime)


async def test_settle_after_expiry_is_refused_and_the_expiry_released_everything(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 100)
    key = await make_key(client, user.headers, budget={"maxCredits": 100, "period": "month"})
    headers = key_headers(str(key["key"]))
    auth = (await authorize(client, headers, ttlSeconds=30)).json()
    await _overdue(runtime, auth["id"])
    late = await client.post(f"/api/usage/authorizations/{auth['id']}/settle", headers=headers, json=settle_body())
    assert assert_error(late, 409, "AUTHORIZATION_NOT_ACTIVE")["details"] == {"status": "expired"}
    assert await account(runtime, user.id) == (100, 0, 100)
    assert (await client.get(f"/api/keys/{key['id']}", headers=user.headers)).json()["budget"]["used"] == 0
    read = (await client.get(f"/api/usage/authorizations/{auth['id']}", headers=headers)).json()
    assert read["status"] == "expired"
    # The sweep does the same for authorizations nobody comes back for.
    forgotten = (await authorize(client, headers)).json()
    await _overdue(runtime, forgotten["id"])
    assert await authorizations.expire_overdue(runtime) == 1
    assert await authorizations.expire_overdue(runtime) == 0
    assert await account(runtime, user.id) == (100, 0, 100)
    await assert_reconciled(runtime)


async def _overdue(runtime: Runtime, auth_id: str) -> None:
    tx = runtime.tx()
    try:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        stmt = update(UsageAuthorization).where(UsageAuthorization.id == uuid.UUID(auth_id)).values(expires_at=past)
        await tx.session.execute(stmt)
        await tx.commit()
    finally:
        await tx.close()


async def test_idempotency_key_replays_without_a_second_hold(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 100)
    headers = {**user.headers, "Idempotency-Key": "auth-1"}
    first = await authorize(client, headers)
    second = await authorize(client, headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json() and second.headers["idempotent-replayed"] == "true"
    assert await account(runtime, user.id) == (100, HELD, 100)
    assert_error(await authorize(client, headers, maxOutputTokens=1), 422, "IDEMPOTENCY_KEY_REUSED")


async def test_who_may_authorize_and_settle(client: httpx.AsyncClient, runtime: Runtime) -> None:
    alice, bob = await create_user(runtime), await create_user(runtime)
    await fund(runtime, alice.id, 100)
    assert_error(await authorize(client, bob.headers, userId=alice.id), 403, "FORBIDDEN")
    service = reporter(runtime)  # usage:write
    assert_error(await authorize(client, service), 422, "VALIDATION_ERROR")  # no userId
    made = await authorize(client, service, userId=alice.id)
    assert made.status_code == 201, made.text
    auth_id = made.json()["id"]
    for path in ("", "/cancel"):
        method = "GET" if not path else "POST"
        response = await client.request(method, f"/api/usage/authorizations/{auth_id}{path}", headers=bob.headers)
        assert_error(response, 404, "AUTHORIZATION_NOT_FOUND")
    other_key = await make_key(client, alice.headers)
    response = await client.post(
        f"/api/usage/authorizations/{auth_id}/cancel", headers=key_headers(str(other_key["key"]))
    )
    assert response.status_code == 200  # alice's key may resolve alice's own (keyless) authorization
    keyed = (await authorize(client, key_headers(str(other_key["key"])))).json()
    third_key = await make_key(client, alice.headers)
    response = await client.post(
        f"/api/usage/authorizations/{keyed['id']}/cancel", headers=key_headers(str(third_key["key"]))
    )
    assert_error(response, 404, "AUTHORIZATION_NOT_FOUND")  # but not another key's
    settled = await client.post(f"/api/usage/authorizations/{keyed['id']}/settle", headers=service, json=settle_body())
    assert settled.status_code == 201, settled.text


async def test_bad_input_and_unauthenticated_calls(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 100)
    assert_error(await client.post("/api/usage/authorizations", json=WORST), 401, "UNAUTHORIZED")
    for body in (
        {},
        {**WORST, "maxInputTokens": -1},
        {**WORST, "maxOutputTokens": "10"},
        {**WORST, "maxInputTokens": 10**13},
        {**WORST, "ttlSeconds": 0},
        {**WORST, "ttlSeconds": 86_401},
        {**WORST, "provider": "Open AI"},
        {**WORST, "extra": True},
        {**WORST, "userId": "nope"},
    ):
        response = await client.post("/api/usage/authorizations", headers=user.headers, json=body)
        assert_error(response, 422, "VALIDATION_ERROR")
    bad = await client.post(
        "/api/usage/authorizations", headers={**user.headers, "Content-Type": "application/json"}, content=b"{"
    )
    assert_error(bad, 400, "INVALID_JSON")
    auth = (await authorize(client, user.headers)).json()
    url = f"/api/usage/authorizations/{auth['id']}/settle"
    for body in (
        {},
        settle_body(inp=-1),
        {**settle_body(), "requestId": "has space"},
        {**settle_body(), "metadata": {"x": "y" * 9000}},
        {**settle_body(), "durationSeconds": -1},
    ):
        assert_error(await client.post(url, headers=user.headers, json=body), 422, "VALIDATION_ERROR")
    assert_error(await client.post(url, json=settle_body()), 401, "UNAUTHORIZED")
    missing = f"/api/usage/authorizations/{uuid.uuid4()}/settle"
    assert_error(await client.post(missing, headers=user.headers, json=settle_body()), 404, "AUTHORIZATION_NOT_FOUND")
    assert_error(await client.post("/api/usage/authorizations/x/cancel", headers=user.headers), 422, "VALIDATION_ERROR")
    # A requestId already used by another report is refused and the authorization stays active.
    first = await client.post(url, headers=user.headers, json=settle_body("dup"))
    assert first.status_code == 201
    auth2 = (await authorize(client, user.headers)).json()
    dup = await client.post(
        f"/api/usage/authorizations/{auth2['id']}/settle", headers=user.headers, json=settle_body("dup")
    )
    assert_error(dup, 422, "IDEMPOTENCY_KEY_REUSED")
    assert (await client.get(f"/api/usage/authorizations/{auth2['id']}", headers=user.headers)).json()[
        "status"
    ] == "active"
