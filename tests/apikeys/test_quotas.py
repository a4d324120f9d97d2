"""Stacked quotas on both backends: several limits per scope (role, user, key), all enforced
at once, against usage counted since the window began whether the quota existed then or not."""

from __future__ import annotations

import uuid

import httpx

from aihub.kit.runtime import Runtime
from tests.apikeys.test_authorizations import authorize
from tests.apikeys.test_keys import key_headers, make_key
from tests.conftest import Caller, create_user
from tests.core.test_usage import event, fund, reporter
from tests.core.test_users import assert_error


async def report(client: httpx.AsyncClient, runtime: Runtime, user: Caller, **extra: object) -> httpx.Response:
    return await client.post("/api/usage/events", headers=reporter(runtime), json=event(user, None, **extra))


async def test_put_accepts_a_list_of_limits_and_the_single_limit_form(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    body = {
        "limits": [
            {"period": "minute", "maxRequests": 10},
            {"period": "week", "maxCredits": 500, "model": "openai/gpt-4o"},
        ]
    }
    created = await client.put("/api/quotas/role:user", headers=admin.headers, json=body)
    assert created.status_code == 201, created.text
    got = (await client.get("/api/quotas/role:user", headers=admin.headers)).json()
    assert got["limits"] == [
        {"period": "minute", "model": None, "maxCredits": None, "maxTokens": None, "maxRequests": 10},
        {"period": "week", "model": "openai/gpt-4o", "maxCredits": 500, "maxTokens": None, "maxRequests": None},
    ]
    assert got["period"] == "minute" and got["maxRequests"] == 10  # the single-limit fields: the first limit
    single = await client.put("/api/quotas/role:user", headers=admin.headers, json={"period": "hour", "maxTokens": 9})
    assert single.status_code == 200, single.text
    assert single.json()["limits"] == [
        {"period": "hour", "model": None, "maxCredits": None, "maxTokens": 9, "maxRequests": None}
    ]
    key_scope = f"key:{uuid.uuid4()}"
    assert (await client.put(f"/api/quotas/{key_scope}", headers=admin.headers, json=body)).status_code == 201
    assert (await client.delete(f"/api/quotas/{key_scope}", headers=admin.headers)).status_code == 204
    assert_error(await client.get(f"/api/quotas/{key_scope}", headers=admin.headers), 404, "QUOTA_NOT_FOUND")
    bad: object
    for bad in (
        {},
        {"limits": []},
        {"limits": [{"period": "year"}]},
        {"limits": [{"period": "day", "model": "gpt-4o"}]},
        {"limits": [{"period": "day", "maxCredits": -1}]},
        {"limits": [{"period": "day"}] * 21},
        {"limits": [{"period": "day"}], "period": "day"},
        {"period": "day", "extra": 1},
    ):
        response = await client.put("/api/quotas/role:user", headers=admin.headers, json=bad)
        assert_error(response, 422, "VALIDATION_ERROR")
    assert_error(
        await client.put("/api/quotas/key:nope", headers=admin.headers, json={"period": "day"}), 422, "VALIDATION_ERROR"
    )


async def test_every_limit_applies_at_once_and_models_are_counted_apart(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    user = await create_user(runtime)
    await fund(runtime, user.id, 10_000)
    role = {"limits": [{"period": "day", "maxRequests": 4}]}
    assert (await client.put("/api/quotas/role:user", headers=admin.headers, json=role)).status_code == 201
    own = {
        "limits": [
            {"period": "month", "maxTokens": 4000, "model": "openai/gpt-4o"},
            {"period": "hour", "maxCredits": 1000},
        ]
    }
    assert (await client.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json=own)).status_code == 201
    assert (await report(client, runtime, user)).status_code == 201  # gpt-4o, 2000 tokens
    assert (await report(client, runtime, user)).status_code == 201  # 4000
    refused = assert_error(await report(client, runtime, user), 429, "QUOTA_EXCEEDED")
    assert refused["details"] == {  # the model's own limit
        "scope": f"user:{user.id}",
        "period": "month",
        "model": "openai/gpt-4o",
        "resetsAt": refused["details"]["resetsAt"],  # type: ignore[index]
    }
    # Another model is not under that limit, but still under the role's 4 requests a day.
    assert (await report(client, runtime, user, model="gpt-4o-mini")).status_code == 201
    assert (await report(client, runtime, user, model="gpt-4o-mini")).status_code == 201
    day = assert_error(await report(client, runtime, user, model="gpt-4o-mini"), 429, "QUOTA_EXCEEDED")
    assert day["details"]["scope"] == "role:user"  # type: ignore[index]
    mine = (await client.get("/api/usage/quota", headers=user.headers)).json()
    by_scope = {(i["scope"], i["period"], i["model"]): i for i in mine["items"]}
    assert set(by_scope) == {
        ("role:user", "day", None),
        (f"user:{user.id}", "month", "openai/gpt-4o"),
        (f"user:{user.id}", "hour", None),
    }
    assert by_scope[("role:user", "day", None)]["used"]["requests"] == 4
    assert by_scope[("role:user", "day", None)]["remaining"]["requests"] == 0
    assert by_scope[(f"user:{user.id}", "month", "openai/gpt-4o")]["used"]["tokens"] == 4000
    assert by_scope[(f"user:{user.id}", "hour", None)]["used"]["credits"] == 13 + 13 + 1 + 1
    assert (
        by_scope[(f"user:{user.id}", "hour", None)]["resetsAt"]
        > by_scope[(f"user:{user.id}", "hour", None)]["periodStart"]
    )
    assert mine["remaining"]["requests"] == 0 and mine["scope"] == "role:user"  # the tightest one on top


async def test_usage_before_the_quota_existed_counts(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    user = await create_user(runtime)
    await fund(runtime, user.id, 10_000)
    for _ in range(3):
        assert (await report(client, runtime, user)).status_code == 201
    limits = {"limits": [{"period": "minute", "maxRequests": 3}]}
    assert (await client.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json=limits)).status_code == 201
    assert_error(await report(client, runtime, user), 429, "QUOTA_EXCEEDED")


async def test_a_key_scope_limits_that_key_only(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    user = await create_user(runtime)
    await fund(runtime, user.id, 10_000)
    key = await make_key(client, user.headers)
    limits = {"limits": [{"period": "day", "maxRequests": 1}]}
    assert (await client.put(f"/api/quotas/key:{key['id']}", headers=admin.headers, json=limits)).status_code == 201
    headers = key_headers(str(key["key"]))
    first = await authorize(client, headers)
    assert first.status_code == 201, first.text
    refused = assert_error(await authorize(client, headers), 429, "QUOTA_EXCEEDED")
    assert refused["details"]["scope"] == f"key:{key['id']}"  # type: ignore[index]
    assert (await authorize(client, user.headers)).status_code == 201  # the user's own token is not that key
    other = await make_key(client, user.headers)
    assert (await authorize(client, key_headers(str(other["key"])))).status_code == 201
    seen = (await client.get("/api/usage/quota", headers=headers)).json()
    assert [(i["scope"], i["used"]["requests"]) for i in seen["items"]] == [(f"key:{key['id']}", 1)]
    # A cancelled call gives its request back to every limit it was counted in.
    cancelled = await client.post(f"/api/usage/authorizations/{first.json()['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200, cancelled.text
    assert (await authorize(client, headers)).status_code == 201
