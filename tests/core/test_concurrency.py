"""Concurrent requests through a real uvicorn server on PostgreSQL."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select

from aihub.models import AuditLog, CreditAccount, User
from tests.conftest import LiveServer, create_user


async def test_concurrent_creates_of_one_email_make_one_user(live_core: LiveServer) -> None:
    admin = await create_user(live_core.runtime, roles=["admin"])
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=live_core.url, headers=admin.headers, limits=limits, timeout=30) as c:
        responses = await asyncio.gather(
            *(c.post("/api/users", json={"email": f"{' ' if i % 2 else ''}Race@Example.com"}) for i in range(60))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 59
    assert all(r.json()["code"] == "EMAIL_TAKEN" for r in responses if r.status_code == 409)
    tx = live_core.runtime.tx()
    try:
        users = (
            await tx.session.execute(select(func.count()).select_from(User).where(User.email == "race@example.com"))
        ).scalar_one()
        accounts = (await tx.session.execute(select(func.count()).select_from(CreditAccount))).scalar_one()
        audits = (
            await tx.session.execute(select(func.count()).select_from(AuditLog).where(AuditLog.action == "user.create"))
        ).scalar_one()
    finally:
        await tx.close()
    assert users == 1
    assert accounts == 2  # the admin's and the winner's: the losers left nothing half-written
    assert audits == 2


async def test_concurrent_writes_keep_the_audit_chain_valid(live_core: LiveServer) -> None:
    admin = await create_user(live_core.runtime, roles=["admin"])
    targets = [await create_user(live_core.runtime) for _ in range(10)]
    async with httpx.AsyncClient(base_url=live_core.url, headers=admin.headers, timeout=30) as c:
        results = await asyncio.gather(
            *(c.patch(f"/api/users/{targets[i % 10].id}", json={"displayName": f"name-{i}"}) for i in range(200))
        )
        assert {r.status_code for r in results} == {200}
        verify = (await c.get("/api/audit-logs/verify")).json()
    assert verify["valid"] is True
    assert verify["checked"] == 1 + 10 + 200


async def test_openapi_schema_is_published(live_core: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_core.url) as c:
        schema = (await c.get("/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/api/users/me",
        "/api/users",
        "/api/users/{user_id}/roles",
        "/api/roles",
        "/api/permissions/check",
        "/api/audit-logs",
        "/api/audit-logs/verify",
    ):
        assert path in paths
    user = schema["components"]["schemas"]["UserOut"]["properties"]
    assert {"displayName", "createdAt", "updatedAt"} <= set(user)


async def test_concurrent_price_changes_leave_one_current_price(live_core: LiveServer) -> None:
    from aihub.models import ModelPrice

    admin = await create_user(live_core.runtime, roles=["admin"])
    async with httpx.AsyncClient(base_url=live_core.url, headers=admin.headers, timeout=30) as c:
        results = await asyncio.gather(
            *(c.put("/api/pricing/openai/gpt-4o", json={"inputPer1k": i + 1, "outputPer1k": 1}) for i in range(40))
        )
        codes = [r.json().get("code") for r in results if r.status_code >= 400]
        current = (await c.get("/api/pricing/openai/gpt-4o")).json()
    assert {r.status_code for r in results} <= {200, 409}
    assert set(codes) <= {"CONCURRENT_UPDATE"}
    tx = live_core.runtime.tx()
    try:
        stmt = (
            select(func.count())
            .select_from(ModelPrice)
            .where(ModelPrice.provider == "openai", ModelPrice.model == "gpt-4o", ModelPrice.effective_to.is_(None))
        )
        open_rows = (await tx.session.execute(stmt)).scalar_one()
        total = (
            await tx.session.execute(select(func.count()).select_from(ModelPrice).where(ModelPrice.model == "gpt-4o"))
        ).scalar_one()
    finally:
        await tx.close()
    assert open_rows == 1
    assert total == 1 + sum(1 for r in results if r.status_code == 200)  # the seed + each accepted change
    assert current["inputPer1k"] in {float(i + 1) for i in range(40)}
