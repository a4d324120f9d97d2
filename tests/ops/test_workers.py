"""``aihub serve <service> --workers N``: N processes share the port, limits stay exact across
them (Redis), metrics add up over all of them, and SIGTERM drains every worker."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.ops.procs import aihub_env, start, wait_ready

pytestmark = pytest.mark.e2e


async def _upstream_app() -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    runner = web.AppRunner(await _upstream_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


async def _ready_bodies(client: httpx.AsyncClient, url: str, n: int) -> list[httpx.Response]:
    # A new connection each time: SO_REUSEPORT spreads connections, not requests.
    return [await client.get(url + "/health/ready", headers={"Connection": "close"}) for _ in range(n)]


async def test_gateway_workers_share_the_port_limit_exactly_and_drain_on_sigterm(
    upstream: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = aihub_env(
        AIHUB_REDIS_URL=redis_url,
        AIHUB_GATEWAY_PORT=str(port),
        AIHUB_CORE_URL=upstream,
        AIHUB_AUTH_URL=upstream,
        AIHUB_MCP_URL=upstream,
        AIHUB_RATE_LIMIT_GUEST="7",
        AIHUB_SHUTDOWN_DRAIN_SECONDS="3",
        AIHUB_GATEWAY_HEALTH_INTERVAL_SECONDS="0.2",
        AIHUB_LOG_LEVEL="info",
    )
    proc = start("gateway", ["serve", "gateway", "--workers", "2"], env, tmp_path, port)
    try:
        await wait_ready(proc)
        async with httpx.AsyncClient(timeout=5) as client:
            workers: set[int] = set()
            for _ in range(200):  # every worker answers once it is up
                workers |= {r.json()["checks"]["worker"]["pid"] for r in await _ready_bodies(client, proc.url, 5)}
                if len(workers) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(workers) == 2
            assert workers == _children(proc.proc.pid)  # the supervisor's two processes, one port
            # One guest bucket in Redis for all workers: exactly the limit passes.
            statuses = [
                (await client.get(proc.url + "/api/pricing", headers={"Connection": "close"})).status_code
                for _ in range(12)
            ]
            assert statuses.count(200) == 7 and statuses.count(429) == 5
            # Metrics add up over the workers, whichever one answers the scrape (the other
            # worker's counts reach the shared files within its one-second flush).
            served = 0.0
            for _ in range(100):
                text = (await client.get(proc.url + "/metrics")).text
                served = sum(
                    float(m.group(1))
                    for m in re.finditer(r'aihub_gateway_requests_total\{[^}]*route="/api/pricing"[^}]*\} (\S+)', text)
                )
                if served == 12:
                    break
                await asyncio.sleep(0.1)
            assert served == 12
            proc.terminate()
            # Draining: every worker answers 503 on readiness while it still serves.
            draining: set[int] = set()
            for _ in range(100):
                for response in await _ready_bodies(client, proc.url, 4):
                    if response.status_code == 503:
                        draining.add(response.json()["checks"]["worker"]["pid"])
                if draining == workers:
                    break
            assert draining == workers
        assert await proc.exited() == 0
        output = proc.output()
        assert output.count('"shutdown.servers_stopped"') == 2, output[-3000:]
    finally:
        proc.kill()


@pytest.mark.parametrize("service", ["core", "auth"])
async def test_core_and_auth_run_as_several_workers(service: str, pg_url: str, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = aihub_env(
        AIHUB_DATABASE_URL=pg_url,
        AIHUB_REDIS_URL=redis_url,
        AIHUB_AUTO_MIGRATE="false",
        AIHUB_SHUTDOWN_DRAIN_SECONDS="0.5",
        AIHUB_LOG_LEVEL="info",
        **{f"AIHUB_{service.upper()}_PORT": str(port)},
    )
    proc = start(service, ["serve", service, "--workers", "2"], env, tmp_path, port)
    try:
        await wait_ready(proc)
        for _ in range(600):  # both workers started (each logs it), not only the first
            if proc.output().count("Application startup complete") == 2:
                break
            await asyncio.sleep(0.05)
        assert len(_children(proc.proc.pid)) == 2
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(10):
                response = await client.get(proc.url + "/health/ready", headers={"Connection": "close"})
                assert response.status_code == 200
        proc.terminate()
        assert await proc.exited() == 0
        assert proc.output().count('"shutdown.servers_stopped"') == 2
    finally:
        proc.kill()


def test_several_workers_need_one_service_and_redis(tmp_path: Path) -> None:
    import subprocess
    import sys

    for args, env in (
        (["serve", "--workers", "2"], aihub_env()),
        (["serve", "gateway", "--workers", "2"], aihub_env()),
        (["serve", "gateway", "--workers", "zero"], aihub_env(AIHUB_REDIS_URL="redis://127.0.0.1:6379/0")),
    ):
        done = subprocess.run([sys.executable, "-m", "aihub", *args], env=env, capture_output=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr[-500:])
