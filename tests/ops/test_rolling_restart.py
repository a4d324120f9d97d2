"""A rolling restart under load loses no request.

A gateway process routes to an upstream group of two core processes (same PostgreSQL
database, same Redis). Several client loops send authenticated requests through the gateway
without pause: reads (``/api/users/me``, ``/api/credits/balance``) and writes (debits with an
Idempotency-Key). Each core instance in turn gets SIGTERM, must exit 0, starts again and
rejoins. Every client request must succeed, and afterwards the ledger holds exactly one debit
per successful write and reconciles.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest
from sqlalchemy import func, select

from aihub.config import Settings
from aihub.core.credits.repository import ledger
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, _core_app, create_user, free_port
from tests.core.credits.helpers import assert_reconciled, grant, money
from tests.ops.procs import Proc, aihub_env, start, wait_ready

pytestmark = pytest.mark.e2e
LOOPS = 8
USERS = 8
GRANT = 1_000_000


@dataclass
class Load:
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    debits: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failures)


async def _client_loop(
    http: aiohttp.ClientSession, base: str, users: list[Caller], service: dict[str, str], n: int, load: Load
) -> None:
    step = 0
    while not load.stop.is_set():
        user = users[(n + step) % len(users)]
        kind = ("me", "balance", "debit")[step % 3]
        step += 1
        try:
            if kind == "debit":
                headers = {**service, "Idempotency-Key": f"roll-{uuid.uuid4().hex}"}
                body = {"userId": user.id, "amount": 1, "reason": "usage"}
                async with http.post(base + "/api/credits/deduct", json=body, headers=headers) as resp:
                    status, text = resp.status, await resp.text()
                expected = 201
            else:
                path = "/api/users/me" if kind == "me" else "/api/credits/balance"
                async with http.get(base + path, headers=user.headers) as resp:
                    status, text = resp.status, await resp.text()
                expected = 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            load.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
            continue
        if status == expected:
            load.ok[kind] += 1
        else:
            load.failures.append(f"{kind}: HTTP {status} {text[:200]}")


def _route_file(tmp_path: Path, cores: list[str]) -> Path:
    path = tmp_path / "routes.yaml"
    urls = ", ".join(cores)
    path.write_text(
        f"upstreams:\n  core: [{urls}]\n"
        "routes:\n"
        "  - {prefix: /api/users, upstream: core}\n"
        "  - {prefix: /api/credits, upstream: core}\n"
    )
    return path


async def _in_rotation(http: aiohttp.ClientSession, gateway: str, count: int) -> None:
    """Until the gateway's readiness reports ``count`` healthy core instances, ten times in a
    row on fresh connections: with several gateway workers each has its own view."""
    deadline = time.monotonic() + 30
    agreed = 0
    while time.monotonic() < deadline:
        async with http.get(gateway + "/health/ready", headers={"Connection": "close"}) as resp:
            body = await resp.json()
        agreed = agreed + 1 if body["checks"]["upstreams"]["core"]["healthy"] == count else 0
        if agreed >= 10:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the gateway never had {count} core instances in rotation")


async def _served(load: Load, more: int) -> None:
    """Let the load run until ``more`` further requests were answered."""
    target = load.total + more
    while load.total < target:
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("gateway_workers", [1, 2])
async def test_rolling_restart_of_two_core_instances_loses_no_request(
    pg_url: str, redis_url: str, tmp_path: Path, gateway_workers: int
) -> None:
    rt = Runtime.build(Settings(env="test", database_url=pg_url, redis_url=redis_url))
    users = [await create_user(rt) for _ in range(USERS)]
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
        for user in users:
            await grant(client, rt, user.id, GRANT)
    service = money(rt)

    ports = [free_port(), free_port()]
    gateway_port = free_port()
    common = {
        "AIHUB_DATABASE_URL": pg_url,
        "AIHUB_REDIS_URL": redis_url,
        "AIHUB_AUTO_MIGRATE": "false",
        "AIHUB_LOG_LEVEL": "warning",
        "AIHUB_SHUTDOWN_DRAIN_SECONDS": "1.5",
        "AIHUB_SHUTDOWN_TIMEOUT_SECONDS": "15",
        "AIHUB_DB_POOL_SIZE": "10",
        "AIHUB_DB_POOL_OVERFLOW": "5",
    }

    def start_core(i: int) -> Proc:
        return start(
            f"core{i}", ["serve", "core"], aihub_env(**common, AIHUB_CORE_PORT=str(ports[i])), tmp_path, ports[i]
        )

    cores = [start_core(0), start_core(1)]
    routes = _route_file(tmp_path, [c.url for c in cores])
    gateway = start(
        "gateway",
        ["serve", "gateway", "--workers", str(gateway_workers)],
        aihub_env(
            AIHUB_REDIS_URL=redis_url,
            AIHUB_GATEWAY_PORT=str(gateway_port),
            AIHUB_GATEWAY_ROUTES=str(routes),
            AIHUB_GATEWAY_HEALTH_INTERVAL_SECONDS="0.25",
            AIHUB_GATEWAY_ACCESS_LOG="false",
            AIHUB_LOG_LEVEL="warning",
            AIHUB_RATE_LIMIT_USER="1000000",
        ),
        tmp_path,
        gateway_port,
    )
    load = Load()
    exits: list[int] = []
    try:
        for proc in [*cores, gateway]:
            await wait_ready(proc)
        connector = aiohttp.TCPConnector(limit=LOOPS + 2)  # the loops, and the readiness polls
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            await _in_rotation(http, gateway.url, 2)
            started = time.perf_counter()
            loops = [
                asyncio.create_task(_client_loop(http, gateway.url, users, service, n, load)) for n in range(LOOPS)
            ]
            await _served(load, 50)  # warm: connections open, caches filled
            steady_from, steady_count = time.perf_counter(), load.total
            await _served(load, 250)
            baseline = (load.total - steady_count) / (time.perf_counter() - steady_from)
            restart_from, restart_count = time.perf_counter(), load.total
            for i in (0, 1):
                cores[i].terminate()
                exits.append(await cores[i].exited())
                cores[i] = start_core(i)
                await wait_ready(cores[i])
                await _in_rotation(http, gateway.url, 2)
                await _served(load, 200)  # the restarted instance takes its share again
            during = (load.total - restart_count) / (time.perf_counter() - restart_from)
            load.stop.set()
            await asyncio.gather(*loops)
            elapsed = time.perf_counter() - started
    finally:
        load.stop.set()
        for proc in [*cores, gateway]:
            proc.kill()

    print(
        f"\nrolling restart: {load.total} requests in {elapsed:.1f} s through the gateway "
        f"({gateway_workers} workers, {LOOPS} client loops), "
        f"{dict(load.ok)}, failed: {len(load.failures)}; core exit codes {exits}\n"
        f"rate: {during:.0f} req/s while the two instances restarted in turn; baseline {baseline:.0f} req/s "
        f"with both up, same processes, same run"
    )
    assert load.failures == [], load.failures[:20]
    assert exits == [0, 0]
    async with rt.engine.connect() as conn:
        debits = (await conn.execute(select(func.count()).where(ledger.c.type == "debit"))).scalar_one()
    assert debits == load.ok["debit"]  # each write applied exactly once, retries included
    await assert_reconciled(rt)
    await rt.close()
