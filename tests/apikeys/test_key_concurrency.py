"""Concurrent issue and revocation of API keys through core's real HTTP stack (uvicorn), on
PostgreSQL and on the embedded default: a key never issues more than it has, prefixes never
repeat, and of concurrent revocations one revokes and audits."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from aihub.kit.runtime import Runtime
from aihub.models import ApiKey, AuditLog
from tests.conftest import LiveServer, _core_app, _live, create_user

CHILDREN = 40  # half within the parent key, half wider
BY_TOKEN = 20
REVOKERS = 8
KEYS = 5


@pytest.fixture
async def core(runtime: Runtime) -> AsyncIterator[LiveServer]:
    async for live in _live(_core_app(runtime), runtime):
        yield live


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers, json=body) as resp:
        raw = await resp.read()
        return resp.status, (await resp.json() if raw else None)


async def audits(rt: Runtime, key_id: str) -> list[AuditLog]:
    tx = rt.tx()
    try:
        stmt = (
            select(AuditLog)
            .where(AuditLog.entity_type == "api_key", AuditLog.entity_id == key_id)
            .order_by(AuditLog.chain_seq)
        )
        return list((await tx.session.execute(stmt)).scalars().all())
    finally:
        await tx.close()


PARENT = {
    "name": "parent",
    "models": ["openai/*"],
    "allowedIps": ["127.0.0.1"],
    "requestsPerMinute": 10,
    "budget": {"maxCredits": 100, "period": "day"},
}


def child(i: int) -> dict[str, Any]:
    if i % 2 == 0:  # within: a narrower model, rate and budget
        return {
            "name": f"child-{i}",
            "models": ["openai/gpt-4o"],
            "allowedIps": ["127.0.0.1"],
            "requestsPerMinute": 1 + i % 10,
            "budget": {"maxCredits": 1 + i, "period": "day"},
        }
    wider: dict[str, Any] = {**PARENT, "name": f"child-{i}"}
    wider[("models", "requestsPerMinute", "budget")[i % 3]] = (
        ["anthropic/*"] if i % 3 == 0 else 11 if i % 3 == 1 else {"maxCredits": 101, "period": "day"}
    )
    return wider


async def test_concurrent_creates_stay_within_the_parent_key_and_never_share_a_prefix(core: LiveServer) -> None:
    rt = core.runtime
    owner = await create_user(rt)
    url = core.url + "/api/keys"
    async with aiohttp.ClientSession() as http:
        status, parent = await call(http, "POST", url, bearer(owner.token), PARENT)
        assert status == 201, parent
        by_key = [call(http, "POST", url, bearer(parent["key"]), child(i)) for i in range(CHILDREN)]
        by_token = [call(http, "POST", url, bearer(owner.token), {"name": f"t{i}"}) for i in range(BY_TOKEN)]
        results = await asyncio.gather(*by_key, *by_token)
        keyed, tokened = results[:CHILDREN], results[CHILDREN:]
        for i, (status, body) in enumerate(keyed):
            expected = (201, None) if i % 2 == 0 else (403, "KEY_EXCEEDS_OWNER")
            assert (status, None if status == 201 else body["code"]) == expected, (i, body)
        assert [status for status, _ in tokened] == [201] * BY_TOKEN
        made = [body for status, body in results if status == 201] + [parent]
        # Each key works, as the key it was issued as.
        for body in made[:: len(made) // 6]:
            status, current = await call(http, "GET", url + "/current", {"X-API-Key": body["key"]})
            assert (status, current["id"]) == (200, body["id"])
    assert (
        len({b["prefix"] for b in made}) == len({b["key"] for b in made}) == len(made) == CHILDREN // 2 + BY_TOKEN + 1
    )
    tx = rt.tx()
    try:
        rows = (await tx.session.execute(select(ApiKey).where(ApiKey.user_id == uuid.UUID(owner.id)))).scalars().all()
        assert {str(r.id) for r in rows} == {b["id"] for b in made}
        for row in rows:
            if row.name.startswith("child-"):
                assert row.models == ["openai/gpt-4o"] and (row.requests_per_minute or 0) <= 10
                assert row.budget_max_credits is not None and row.budget_max_credits <= 100
        creates = await tx.session.execute(
            select(func.count()).select_from(AuditLog).where(AuditLog.action == "apikey.create")
        )
        assert creates.scalar_one() == len(made)
    finally:
        await tx.close()


async def test_concurrent_revocations_revoke_and_audit_once(core: LiveServer) -> None:
    rt = core.runtime
    owner = await create_user(rt)
    headers = bearer(owner.token)
    async with aiohttp.ClientSession() as http:
        keys = [(await call(http, "POST", core.url + "/api/keys", headers, {"name": f"k{i}"}))[1] for i in range(KEYS)]
        revokes = [
            call(http, "DELETE", f"{core.url}/api/keys/{k['id']}", headers) for k in keys for _ in range(REVOKERS)
        ]
        renames = [
            call(http, "PATCH", f"{core.url}/api/keys/{k['id']}", headers, {"name": f"renamed-{j}"})
            for k in keys
            for j in range(3)
        ]
        results = await asyncio.gather(*revokes, *renames)
        for k in keys:
            status, body = await call(http, "GET", core.url + "/api/users/me", {"X-API-Key": k["key"]})
            assert (status, body["code"]) == (401, "INVALID_API_KEY")
    assert [status for status, _ in results[: len(revokes)]] == [204] * len(revokes)
    renamed = results[len(revokes) :]
    assert {(s, None if s == 200 else b["code"]) for s, b in renamed} <= {(200, None), (401, "INVALID_API_KEY")}
    updates = 0
    for k in keys:
        trail = await audits(rt, k["id"])
        actions = [a.action for a in trail]
        updates += actions.count("apikey.update")
        assert actions.count("apikey.revoke") == 1 and actions[-1] == "apikey.revoke", actions
        # One after the other: each change saw what the one before it left.
        for earlier, later in itertools.pairwise(trail):
            left = {f: v for f, v in (earlier.after or {}).items() if f != "issuedByKey"}  # said at create only
            assert later.before == left
    assert updates == sum(1 for s, _ in renamed if s == 200)


async def test_a_key_revoked_while_it_issues_keys_issues_none_after(core: LiveServer) -> None:
    rt = core.runtime
    owner = await create_user(rt)
    url = core.url + "/api/keys"
    async with aiohttp.ClientSession() as http:
        status, parent = await call(http, "POST", url, bearer(owner.token), {"name": "parent"})
        assert status == 201
        creates = [call(http, "POST", url, bearer(parent["key"]), {"name": f"c{i}"}) for i in range(20)]
        revoke = call(http, "DELETE", f"{url}/{parent['id']}", bearer(owner.token))
        results = await asyncio.gather(*creates[:10], revoke, *creates[10:])
        after = await call(http, "POST", url, bearer(parent["key"]), {"name": "late"})
    outcomes = {(s, None if s == 201 else b["code"]) for s, b in results[:10] + results[11:]}
    assert outcomes <= {(201, None), (401, "INVALID_API_KEY")}
    assert results[10][0] == 204
    assert (after[0], after[1]["code"]) == (401, "INVALID_API_KEY")
    tx = rt.tx()
    try:
        count = await tx.session.execute(
            select(func.count()).select_from(ApiKey).where(ApiKey.user_id == uuid.UUID(owner.id))
        )
        assert count.scalar_one() == 1 + sum(1 for s, _ in results if s == 201)
    finally:
        await tx.close()
