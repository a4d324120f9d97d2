"""Reconcile CLI, low-balance events (log + webhook with retries) and the hold-expiry sweep."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import text
from typer.testing import CliRunner

from aihub.cli import app as cli
from aihub.config import Settings
from aihub.core.credits import service as credits
from aihub.core.ledger import jobs as ledger_jobs
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from tests.conftest import _core_app, create_user, free_port
from tests.core.credits.helpers import account, grant, money


def test_reconcile_cli_clean_then_mismatch(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def setup() -> str:
        rt = Runtime.build(Settings(env="test", database_url=pg_url))
        try:
            user = await create_user(rt)
            transport = httpx.ASGITransport(app=_core_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
                await grant(client, rt, user.id, 42)
            return user.id
        finally:
            await rt.close()

    user_id = asyncio.run(setup())
    monkeypatch.setenv("AIHUB_DATABASE_URL", pg_url)
    runner = CliRunner()
    clean = runner.invoke(cli, ["ledger", "reconcile"])
    assert clean.exit_code == 0, clean.output
    assert "clean" in clean.output

    async def tamper() -> None:
        rt = Runtime.build(Settings(env="test", database_url=pg_url))
        try:
            async with rt.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE credit_accounts SET balance = balance + 1 WHERE user_id = :u"),
                    {"u": uuid.UUID(user_id)},
                )
        finally:
            await rt.close()

    asyncio.run(tamper())
    broken = runner.invoke(cli, ["ledger", "reconcile"])
    assert broken.exit_code == 1, broken.output
    assert "MISMATCH" in broken.output
    assert user_id in broken.output


class Hook:
    """A local webhook receiver that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        self.got = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        if len(self.calls) <= self.failures:
            return web.Response(status=503)
        self.got.set()
        return web.Response(status=204)


async def _hook_server(hook: Hook) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def test_low_balance_webhook_fires_once_per_crossing_with_retries(settings: Settings) -> None:
    hook = Hook(failures=2)
    server, url = await _hook_server(hook)
    rt = Runtime.build(
        settings.model_copy(
            update={
                "low_balance_threshold": 50,
                "low_balance_webhook_url": url,
                "webhook_backoff_seconds": 0.01,
            }
        )
    )
    try:
        jobs = jobs_of(rt)
        await jobs.start()
        user = await create_user(rt)
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            await grant(client, rt, user.id, 100)
            for amount in (30, 30, 10):  # 100 → 70 → 40 (crosses 50) → 30 (already below)
                response = await client.post(
                    "/api/credits/deduct", json={"userId": user.id, "amount": amount}, headers=money(rt)
                )
                assert response.status_code == 201
            await asyncio.wait_for(hook.got.wait(), timeout=15)
            await asyncio.sleep(0.2)
        assert len(hook.calls) == 3  # two failures, then delivered; one crossing only
        assert hook.calls[-1] == {
            "type": "credits.low_balance",
            "userId": user.id,
            "threshold": 50,
            "available": 40,
            "balance": 40,
        }
    finally:
        await rt.close()
        await server.cleanup()


async def test_sweep_releases_overdue_holds_once(runtime: Runtime, client: httpx.AsyncClient) -> None:
    user = await create_user(runtime)
    await grant(client, runtime, user.id, 10)
    for _ in range(3):
        response = await client.post(
            "/api/credits/holds",
            json={"userId": user.id, "amount": 2, "ttlSeconds": 60},
            headers=money(runtime),
        )
        assert response.status_code == 201
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    tx = runtime.tx()
    try:
        assert await credits.expire_holds(tx, limit=2, now=later) == 2
        await tx.commit()
    finally:
        await tx.close()
    await ledger_jobs.sweep_expired_holds(runtime, {"limit": 2})  # now-based: nothing overdue yet
    assert await account(runtime, user.id) == (10, 2, 10)
    tx = runtime.tx()
    try:
        assert await credits.expire_holds(tx, now=later) == 1
        assert await credits.expire_holds(tx, now=later) == 0
        await tx.commit()
    finally:
        await tx.close()
    assert await account(runtime, user.id) == (10, 0, 10)


@pytest.mark.postgres
async def test_concurrent_sweepers_release_each_hold_once(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    user = await create_user(rt)
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
        await grant(client, rt, user.id, 1000)
        await asyncio.gather(
            *(
                client.post(
                    "/api/credits/holds",
                    json={"userId": user.id, "amount": 5, "ttlSeconds": 1},
                    headers=money(rt),
                )
                for _ in range(40)
            )
        )
    assert await account(rt, user.id) == (1000, 200, 1000)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)

    async def sweeper() -> int:
        total = 0
        while True:
            tx = rt.tx()
            try:
                count = await credits.expire_holds(tx, limit=7, now=later)
                await tx.commit()
            finally:
                await tx.close()
            total += count
            if count == 0:
                return total

    counts = await asyncio.gather(*(sweeper() for _ in range(4)))
    assert sum(counts) == 40
    assert await account(rt, user.id) == (1000, 0, 1000)
