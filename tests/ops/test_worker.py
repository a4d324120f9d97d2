"""``aihub worker``: two workers against one database and one Redis do every job exactly once.

A core process with ``AIHUB_CORE_RUN_JOBS=false`` takes the writes (it enqueues, never
consumes or sweeps); two worker processes consume the queue and tick the periodic jobs.
Expired holds are released once each (one audit row per hold, the workers' counters add up,
reserved returns to zero), and each low-balance webhook reaches a local receiver once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy import func, select

from aihub.config import Settings
from aihub.kit.jobs import QUEUE
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog, CreditHold
from tests.conftest import create_user, free_port
from tests.core.credits.helpers import account, assert_reconciled, money
from tests.ops.procs import Proc, aihub_env, start, wait_ready

pytestmark = pytest.mark.e2e
HOLDS = 30
LOW_USERS = 8


class Hook:
    """The webhook receiver: records every delivery."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        return web.Response(status=204)

    async def serve(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}/hook"


async def _counter(proc: Proc, name: str, labels: dict[str, str] | None = None) -> float:
    """One counter's value from a worker's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(proc.url + "/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


async def _until(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_two_workers_release_each_expired_hold_and_deliver_each_webhook_once(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    hook = Hook()
    hook_runner, hook_url = await hook.serve()
    rt = Runtime.build(Settings(env="test", database_url=pg_url, redis_url=redis_url))
    shared = {
        "AIHUB_DATABASE_URL": pg_url,
        "AIHUB_REDIS_URL": redis_url,
        "AIHUB_AUTO_MIGRATE": "false",
        "AIHUB_LOW_BALANCE_THRESHOLD": "50",
        "AIHUB_LOW_BALANCE_WEBHOOK_URL": hook_url,
        "AIHUB_HOLD_SWEEP_INTERVAL_SECONDS": "0.2",
        "AIHUB_DB_POOL_SIZE": "5",
    }
    core_port = free_port()
    core = start(
        "core",
        ["serve", "core"],
        aihub_env(**shared, AIHUB_CORE_PORT=str(core_port), AIHUB_CORE_RUN_JOBS="false"),
        tmp_path,
        core_port,
    )
    workers: list[Proc] = []
    for i in range(2):
        port = free_port()
        env = aihub_env(**shared, AIHUB_WORKER_PORT=str(port))
        workers.append(start(f"worker{i}", ["worker"], env, tmp_path, port))
    try:
        holder = await create_user(rt)
        low = [await create_user(rt) for _ in range(LOW_USERS)]
        for proc in [core, *workers]:
            await wait_ready(proc)
        async with aiohttp.ClientSession() as http:

            async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                async with http.post(core.url + path, json=body, headers=money(rt)) as resp:
                    assert resp.status == 201, await resp.text()
                    return dict(await resp.json())

            await post("/api/credits/grant", {"userId": holder.id, "amount": 10_000, "reason": "purchase"})
            await asyncio.gather(
                *(post("/api/credits/holds", {"userId": holder.id, "amount": 5, "ttlSeconds": 1}) for _ in range(HOLDS))
            )
            for user in low:  # 100 -> 40 crosses the threshold of 50 once
                await post("/api/credits/grant", {"userId": user.id, "amount": 100, "reason": "purchase"})
                await post("/api/credits/deduct", {"userId": user.id, "amount": 60})

        async def holds_left() -> bool:
            async with rt.engine.connect() as conn:
                held = select(func.count()).select_from(CreditHold).where(CreditHold.status == "held")
                return (await conn.execute(held)).scalar_one() == 0

        await _until(holds_left, "the sweep")
        await _until(lambda: _delivered(workers, LOW_USERS), "the webhooks")

        expired = [await _counter(w, "aihub_credit_holds_expired_total") for w in workers]
        assert sum(expired) == HOLDS, expired  # and core, told not to run jobs, swept none
        async with rt.engine.connect() as conn:
            audits = select(func.count()).select_from(AuditLog).where(AuditLog.action == "credits.hold.expire")
            assert (await conn.execute(audits)).scalar_one() == HOLDS
        assert await account(rt, holder.id) == (10_000, 0, 10_000)
        await assert_reconciled(rt)

        assert sorted(call["userId"] for call in hook.calls) == sorted(user.id for user in low)
        assert all(call["available"] == 40 and call["threshold"] == 50 for call in hook.calls)
        redis = Redis.from_url(redis_url)
        try:
            pending = await redis.xpending(QUEUE, "aihub")
        finally:
            await redis.aclose()
        assert pending["pending"] == 0  # every delivered job acknowledged

        for worker in workers:
            worker.terminate()
        assert [await w.exited() for w in workers] == [0, 0], [w.output()[-2000:] for w in workers]
        assert all("worker.stopped" in w.output() for w in workers)
    finally:
        for proc in [core, *workers]:
            proc.kill()
        await rt.close()
        await hook_runner.cleanup()


async def _delivered(workers: list[Proc], count: int) -> bool:
    counts = [await _counter(w, "aihub_credit_low_balance_webhooks_total", {"outcome": "delivered"}) for w in workers]
    return sum(counts) >= count
