"""POST /api/credits/deduct through one real core process on PostgreSQL, next to a raw-SQL baseline.

    flock /tmp/aihub-bench.lock .venv/bin/python bench/ledger/bench_deduct.py \
        [--seconds 10] [--clients 32] [--accounts 10000]

Steps: a fresh PostgreSQL database (migrated by `aihub migrate`), N funded accounts seeded
with a matching ledger row each, one `aihub serve core` process (Redis for the token
blacklist), a service token with scope credits:deduct (the realistic caller), then:

  (a) spread: 32 concurrent clients, each deduction on the next of the N accounts;
  (b) hot:    32 concurrent clients on ONE account;
  floor:      core's own app with one trivial authenticated endpoint (bench/ledger/floor_app.py:
              JWT, blacklist, permission, Pydantic body, JSON answer, no SQL): the framework floor;
  1 client:   the latency of one deduction at a time (p50 must not regress);
  baseline:   the same conditional UPDATE … RETURNING + ledger INSERT, one transaction per
              debit, on lean scratch tables, driven directly with asyncpg over 32 connections
              (no HTTP, no auth, no audit), spread and hot.

Deductions/s are counted in the database (debit rows written during the run), so requests
still in flight when the load generator stops are not lost or double counted. Afterwards:
no negative balance, reserved ≤ balance, and `aihub ledger reconcile` must exit 0.
The load generator is wrk when present (C, cheap on a 2-core box), otherwise aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from aihub.config import Settings
from aihub.kit.jwt import TokenCodec

PG_ADMIN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
HERE = Path(__file__).resolve().parent
AIHUB = str(Path(sys.executable).with_name("aihub"))
START_BALANCE = 1_000_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dsn(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def create_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def seed(db: str, count: int) -> list[str]:
    """Users with funded accounts, each funding recorded as a ledger row (reconcile stays clean)."""
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    conn = await asyncpg.connect(dsn(db))
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "users",
                records=[(i, f"bench-{i.hex[:16]}@example.com", True, "active", now, now) for i in ids],
                columns=["id", "email", "verified", "status", "created_at", "updated_at"],
            )
            await conn.copy_records_to_table(
                "credit_accounts",
                records=[(i, START_BALANCE, 0, now, now) for i in ids],
                columns=["user_id", "balance", "reserved", "created_at", "updated_at"],
            )
            await conn.copy_records_to_table(
                "credit_transactions",
                records=[(uuid.uuid4(), i, START_BALANCE, "credit", "purchase", START_BALANCE, now) for i in ids],
                columns=["id", "user_id", "amount", "type", "reason", "balance_after", "created_at"],
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return [str(i) for i in ids]


async def debit_rows(db: str) -> int:
    conn = await asyncpg.connect(dsn(db))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM credit_transactions WHERE type = 'debit'"))
    finally:
        await conn.close()


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("core exited during start")
            try:
                async with http.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("core did not become healthy")


def run_wrk(
    url: str,
    ids: list[str],
    token: str,
    clients: int,
    seconds: int,
    script: Path = HERE / "deduct.lua",
    env_extra: dict[str, str] | None = None,
) -> str:
    """wrk driving ``script`` (which reads IDS_FILE and BENCH_TOKEN, plus ``env_extra``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as handle:
        handle.write("\n".join(ids) + "\n")
        ids_file = handle.name
    try:
        env = {**os.environ, "IDS_FILE": ids_file, "BENCH_TOKEN": token, **(env_extra or {})}
        result = subprocess.run(
            [
                "wrk",
                "--latency",
                f"-t{min(2, clients)}",
                f"-c{clients}",
                f"-d{seconds}s",
                "-s",
                str(script),
                url,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout
    finally:
        os.unlink(ids_file)


async def run_aiohttp(
    url: str, token: str, clients: int, seconds: int, body: Callable[[int, int], dict[str, Any]]
) -> str:
    """The load without wrk: ``clients`` loops POSTing ``body(client, n)`` to ``url`` until the deadline."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + seconds
    statuses: dict[int, int] = {}

    async def client(offset: int) -> None:
        n = 0
        async with aiohttp.ClientSession(headers=headers) as http:
            while time.monotonic() < deadline:
                n += 1
                async with http.post(url, json=body(offset, n)) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return f"aiohttp statuses: {statuses}"


def percentile(output: str, label: str) -> float | None:
    """A latency percentile (ms) from wrk --latency's distribution ("  99%   12.34ms")."""
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == label:
            value = parts[1]
            for unit, scale in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
                if value.endswith(unit):
                    return float(value[: -len(unit)]) * scale
    return None


def requests_per_second(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return 0.0


async def http_case(
    db: str, url: str, ids: list[str], token: str, clients: int, seconds: int, path: str | None = None
) -> tuple[float, str]:
    before = await debit_rows(db)
    started = time.monotonic()
    if shutil.which("wrk"):
        extra = {"BENCH_PATH": path} if path else None
        output = await asyncio.to_thread(run_wrk, url, ids, token, clients, seconds, HERE / "deduct.lua", extra)
        if path:  # the floor writes nothing: count its answers
            return requests_per_second(output), output
    else:

        def deduction(offset: int, n: int) -> dict[str, Any]:
            return {"userId": ids[(offset + n * clients) % len(ids)], "amount": 1, "reason": "usage"}

        output = await run_aiohttp(f"{url}/api/credits/deduct", token, clients, seconds, deduction)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # let in-flight requests commit before counting
    return (await debit_rows(db) - before) / elapsed, output


# Lean scratch tables (no triggers, no foreign keys, no audit): what PostgreSQL itself does
# per transaction for a conditional debit and its ledger row.
SCRATCH = """
DROP TABLE IF EXISTS bench_ledger, bench_accounts;
CREATE TABLE bench_accounts (user_id uuid PRIMARY KEY, balance bigint NOT NULL, reserved bigint NOT NULL,
                             updated_at timestamptz NOT NULL);
CREATE TABLE bench_ledger (seq bigserial PRIMARY KEY, id uuid NOT NULL, user_id uuid NOT NULL, amount bigint NOT NULL,
                           reason text NOT NULL, balance_after bigint NOT NULL, created_at timestamptz NOT NULL);
CREATE INDEX ON bench_ledger (user_id, seq);
INSERT INTO bench_accounts SELECT user_id, balance, reserved, now() FROM credit_accounts;
ANALYZE bench_accounts;
"""
BASELINE_UPDATE = (
    "UPDATE bench_accounts SET balance = balance - $2, updated_at = now() "
    "WHERE user_id = $1 AND balance - reserved >= $2 RETURNING balance"
)
BASELINE_INSERT = (
    "INSERT INTO bench_ledger (id, user_id, amount, reason, balance_after, created_at) "
    "VALUES ($1, $2, $3, 'usage', $4, now())"
)


async def scratch_tables(db: str) -> None:
    conn = await asyncpg.connect(dsn(db))
    try:
        await conn.execute(SCRATCH)
    finally:
        await conn.close()


async def baseline(db: str, ids: list[str], clients: int, seconds: float) -> float:
    """One transaction per debit on the scratch tables (conditional UPDATE + ledger INSERT), asyncpg."""
    pool = await asyncpg.create_pool(dsn(db), min_size=clients, max_size=clients)
    keys = [uuid.UUID(i) for i in ids]
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        n = offset
        async with pool.acquire() as conn:
            while time.monotonic() < deadline:
                n = (n + clients) % len(keys)
                async with conn.transaction():
                    balance = await conn.fetchval(BASELINE_UPDATE, keys[n], 1)
                    if balance is not None:
                        await conn.execute(BASELINE_INSERT, uuid.uuid4(), keys[n], -1, balance)
                        done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    rate = done / (time.monotonic() - started)
    await pool.close()
    return rate


async def invariants(db: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn(db))
    try:
        negative = await conn.fetchval("SELECT count(*) FROM credit_accounts WHERE balance < 0")
        over = await conn.fetchval("SELECT count(*) FROM credit_accounts WHERE reserved > balance")
        return int(negative), int(over)
    finally:
        await conn.close()


def reconcile(db_url: str) -> tuple[int, str]:
    env = {**os.environ, "AIHUB_DATABASE_URL": db_url}
    result = subprocess.run([AIHUB, "ledger", "reconcile"], env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--log-level", default="warning", help="core's AIHUB_LOG_LEVEL (info logs each request)")
    args = parser.parse_args()

    db = f"aihub_bench_{os.getpid()}"
    db_url = "postgresql+asyncpg://" + dsn(db).split("://", 1)[1]
    port, floor_port = free_port(), free_port()
    url, floor_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{floor_port}"
    await create_database(db)
    env = {
        **os.environ,
        "AIHUB_DATABASE_URL": db_url,
        "AIHUB_REDIS_URL": REDIS_URL,
        "AIHUB_CORE_PORT": str(port),
        "AIHUB_LOG_LEVEL": args.log_level,
        "AIHUB_DB_POOL_SIZE": str(args.clients + 8),
    }
    procs: list[subprocess.Popen[bytes]] = []
    load_before = loadavg()
    try:
        subprocess.run([AIHUB, "migrate"], env=env, check=True, capture_output=True)
        ids = await seed(db, args.accounts)
        await scratch_tables(db)
        codec = TokenCodec.from_settings(Settings())
        token = codec.issue(sub="bench", typ="service", role="service", scopes=["credits:deduct"], ttl=None)

        # The framework floor first, alone: core's app with one trivial authenticated endpoint.
        floor = subprocess.Popen([sys.executable, str(HERE / "floor_app.py"), str(floor_port)], env=env)
        procs.append(floor)
        await wait_healthy(floor_url, floor)
        await http_case(db, floor_url, ids, token, args.clients, 2, path="/bench/floor")
        floor_rate, floor_out = await http_case(db, floor_url, ids, token, args.clients, args.seconds, "/bench/floor")
        floor.terminate()
        floor.wait(timeout=30)
        procs.remove(floor)

        proc = subprocess.Popen([AIHUB, "serve", "core"], env=env)
        procs.append(proc)
        await wait_healthy(url, proc)
        # A short warm-up so the first case does not pay for connection set-up and imports.
        await http_case(db, url, ids, token, args.clients, 2)
        one, one_out = await http_case(db, url, ids, token, 1, args.seconds)
        spread, spread_out = await http_case(db, url, ids, token, args.clients, args.seconds)
        hot, hot_out = await http_case(db, url, ids[:1], token, args.clients, args.seconds)
        proc.terminate()
        proc.wait(timeout=30)
        procs.remove(proc)
        base_spread = await baseline(db, ids, args.clients, args.seconds)
        base_hot = await baseline(db, ids[:1], args.clients, args.seconds)
        negative, over = await invariants(db)
        code, report = reconcile(db_url)

        def pct(output: str, label: str) -> str:
            value = percentile(output, label)
            return "-" if value is None else f"{value:.1f}"

        print(
            f"\n=== ledger deduct benchmark: {args.clients} clients, {args.seconds}s per case, "
            f"{os.cpu_count()} cores (shared; figures are noisy), load average {load_before} -> {loadavg()} ==="
        )
        print(f"{'case':<30}{'per s':>9}{'baseline/s':>12}{'ratio':>7}{'p50 ms':>8}{'p99 ms':>8}  target")
        print(
            f"{'framework floor (no SQL)':<30}{floor_rate:>9.0f}{'':>12}{'':>7}"
            f"{pct(floor_out, '50%'):>8}{pct(floor_out, '99%'):>8}"
        )
        print(f"{'raw SQL, spread (1 tx/debit)':<30}{base_spread:>9.0f}")
        print(f"{'raw SQL, hot (1 tx/debit)':<30}{base_hot:>9.0f}")
        print(
            f"{'deduct, 1 client':<30}{one:>9.0f}{'':>12}{'':>7}{pct(one_out, '50%'):>8}{pct(one_out, '99%'):>8}"
            "  p50 no worse than before"
        )
        print(
            f"{'(a) spread, ' + str(args.accounts) + ' accounts':<30}{spread:>9.0f}{base_spread:>12.0f}"
            f"{spread / base_spread:>7.2f}{pct(spread_out, '50%'):>8}{pct(spread_out, '99%'):>8}"
            "  >=1500/s, >=0.35x, p99<=50"
        )
        print(
            f"{'(b) one hot account':<30}{hot:>9.0f}{base_hot:>12.0f}{hot / base_hot:>7.2f}"
            f"{pct(hot_out, '50%'):>8}{pct(hot_out, '99%'):>8}  >=1.0x, p99<=100"
        )
        print(f"deduct spread / framework floor: {spread / floor_rate:.2f}")
        print(f"overdrafts: {negative} negative balances, {over} accounts with reserved > balance")
        print(f"reconcile exit code: {code}")
        print(report.strip())
        print("\n--- load generator output (floor) ---\n" + floor_out.strip())
        print("--- load generator output (1 client) ---\n" + one_out.strip())
        print("--- load generator output (spread) ---\n" + spread_out.strip())
        print("--- load generator output (hot) ---\n" + hot_out.strip())
        if negative or over or code != 0:
            sys.exit(1)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        await drop_database(db)


if __name__ == "__main__":
    asyncio.run(main())
