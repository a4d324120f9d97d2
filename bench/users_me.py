"""GET /api/users/me throughput in one core process, on PostgreSQL and on the embedded default.

Starts the real service (`aihub serve core`) as a subprocess, drives it with wrk, and prints
the figures next to a baseline from the same process and run: GET /health (no token, no
database), so the cost of authentication + permission lookup + one user read is visible.
Also measures the cold start of `aihub serve` on the embedded default (fresh SQLite file,
migrations included) until /health answers.

    .venv/bin/python bench/users_me.py [--duration 10] [--connections 32]

Needs wrk (Debian: apt-get install wrk) and, for the PostgreSQL run, a server at
AIHUB_TEST_PG_DSN (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from aihub.config import Settings
from aihub.kit.runtime import Runtime

PG_DSN = os.environ.get("AIHUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AIHUB = [sys.executable, "-m", "aihub"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(env: dict[str, str], args: list[str]) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    proc = subprocess.Popen([*AIHUB, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{env['AIHUB_CORE_PORT']}/health"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"aihub exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.2).status_code == 200:
                return proc, time.perf_counter() - started
        except httpx.HTTPError:
            time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


async def make_token(database_url: str) -> str:
    from tests.conftest import create_user

    runtime = Runtime.build(Settings(database_url=database_url, auto_migrate=False))
    try:
        caller = await create_user(runtime, email="bench@example.com")
    finally:
        await runtime.close()
    return caller.token


def wrk(url: str, token: str | None, duration: int, connections: int) -> tuple[float, str, str]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw {errors.group(1)} error responses:\n{out}")
    return rps, p50, p99


def run_case(name: str, database_url: str, args: argparse.Namespace) -> list[tuple[str, float, str, str]]:
    port = free_port()
    env = {**os.environ, "AIHUB_DATABASE_URL": database_url, "AIHUB_CORE_PORT": str(port), "AIHUB_LOG_LEVEL": "warning"}
    env.pop("AIHUB_REDIS_URL", None)
    proc, _ = start(env, ["serve", "core"])
    try:
        token = asyncio.run(make_token(database_url))
        base = f"http://127.0.0.1:{port}"
        wrk(f"{base}/api/users/me", token, 2, args.connections)  # warm-up
        health = wrk(f"{base}/health", None, args.duration, args.connections)
        me = wrk(f"{base}/api/users/me", token, args.duration, args.connections)
    finally:
        stop(proc)
    return [(f"{name}: GET /health (baseline)", *health), (f"{name}: GET /api/users/me", *me)]


async def fresh_pg_database() -> str:
    name = f"aihub_bench_{os.getpid()}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"


def cold_start(tmp: Path, runs: int = 3) -> list[float]:
    times = []
    for i in range(runs):
        env = {
            **os.environ,
            "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / f'cold{i}.db'}",
            "AIHUB_CORE_PORT": str(free_port()),
            "AIHUB_LOG_LEVEL": "warning",
        }
        env.pop("AIHUB_REDIS_URL", None)
        proc, elapsed = start(env, ["serve"])
        stop(proc)
        times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    rows: list[tuple[str, float, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += run_case("postgresql", asyncio.run(fresh_pg_database()), args)
        rows += run_case("sqlite", f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args)
        starts = cold_start(Path(tmp))
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s, one `aihub serve core` process, {os.cpu_count()} cores")
    print(f"{'case':48} {'req/s':>9} {'p50':>9} {'p99':>9}")
    for name, rps, p50, p99 in rows:
        print(f"{name:48} {rps:9.0f} {p50:>9} {p99:>9}")
    print(
        f"\ncold start of `aihub serve` (fresh SQLite, migrations, first admin) to /health: "
        f"{', '.join(f'{t:.2f}s' for t in starts)}"
    )


if __name__ == "__main__":
    main()
