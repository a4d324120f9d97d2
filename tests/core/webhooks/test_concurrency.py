"""Concurrent changes to one webhook endpoint through core's real HTTP stack (uvicorn), on
PostgreSQL and on the embedded default: PATCHes apply one after the other, a PATCH racing a
DELETE finds the endpoint gone (404, never a 500), one DELETE deletes and audits."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog, WebhookEndpoint
from tests.conftest import Caller, LiveServer, _core_app, _live, create_user
from tests.core.webhooks.conftest import fast

PATCHES = 12
DELETES = 6


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[LiveServer, Caller]]:
    rt = Runtime.build(fast(settings))
    try:
        admin = await create_user(rt, roles=["admin"])
        async for server in _live(_core_app(rt), rt):
            yield server, admin
    finally:
        await rt.close()


async def _call(http: aiohttp.ClientSession, method: str, url: str, admin: Caller, body: Any = None) -> int:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {admin.token}"}) as resp:
        await resp.read()
        return resp.status


async def _audits(rt: Runtime, endpoint_id: str) -> list[AuditLog]:
    tx = rt.tx()
    try:
        stmt = (
            select(AuditLog)
            .where(AuditLog.entity_type == "webhook_endpoint", AuditLog.entity_id == endpoint_id)
            .order_by(AuditLog.chain_seq)
        )
        return list((await tx.session.execute(stmt)).scalars().all())
    finally:
        await tx.close()


async def _register(http: aiohttp.ClientSession, server: LiveServer, admin: Caller) -> str:
    body = {"url": "https://hooks.example.com/start", "events": ["payment.succeeded"]}
    async with http.post(
        server.url + "/api/webhooks", json=body, headers={"Authorization": f"Bearer {admin.token}"}
    ) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


async def test_concurrent_patches_apply_one_after_the_other(live: tuple[LiveServer, Caller]) -> None:
    server, admin = live
    async with aiohttp.ClientSession() as http:
        endpoint = await _register(http, server, admin)
        url = f"{server.url}/api/webhooks/{endpoint}"
        bodies = [{"url": f"https://hooks.example.com/{i}", "active": i % 2 == 0} for i in range(PATCHES)]
        statuses = await asyncio.gather(*(_call(http, "PATCH", url, admin, b) for b in bodies))
    assert statuses == [200] * PATCHES
    # Each change is audited against what the one before it left: no two saw the same state.
    updates = [a for a in await _audits(server.runtime, endpoint) if a.action == "webhook.update"]
    assert len(updates) == PATCHES
    for earlier, later in itertools.pairwise(updates):
        assert later.before == earlier.after
    tx = server.runtime.tx()
    try:
        row = await tx.session.get(WebhookEndpoint, uuid.UUID(endpoint))
        assert row is not None and updates[-1].after is not None and row.url == updates[-1].after["url"]
    finally:
        await tx.close()


async def test_concurrent_patch_and_delete_never_fail_and_delete_once(live: tuple[LiveServer, Caller]) -> None:
    server, admin = live
    async with aiohttp.ClientSession() as http:
        endpoint = await _register(http, server, admin)
        url = f"{server.url}/api/webhooks/{endpoint}"
        patches = [_call(http, "PATCH", url, admin, {"description": f"d{i}"}) for i in range(PATCHES)]
        deletes = [_call(http, "DELETE", url, admin) for _ in range(DELETES)]
        statuses = await asyncio.gather(*patches, *deletes)
        after = await _call(http, "GET", url, admin)
    patched, deleted = statuses[:PATCHES], statuses[PATCHES:]
    assert set(patched) <= {200, 404}, patched
    assert sorted(deleted) == [204] + [404] * (DELETES - 1)
    assert after == 404
    audits = await _audits(server.runtime, endpoint)
    assert [a.action for a in audits].count("webhook.delete") == 1
    assert [a.action for a in audits].count("webhook.update") == patched.count(200)
    assert audits[-1].action == "webhook.delete"  # nothing changed it once it was gone
