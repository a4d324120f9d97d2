"""Usage metering and reports on PostgreSQL, through one real core process, next to SQL baselines.

    flock /tmp/aihub-bench.lock .venv/bin/python bench/usage/bench_usage.py [--seconds 10] [--clients 32]
        [--rows 1000000] [--users 5000] [--days 60] [--repeat 20] [--batch-size 500] [--batch-clients 4]
        [--skip-ingest] [--skip-reports] [--only-batch]

(a) Ingestion: `POST /api/usage/events` from a service token (scope usage:write), each event a
    new requestId for one of N funded users with role `user`, on which a daily quota is set:
    pricing, quota counter, ledger debit, usage row and audit rows all happen per event.
    Events/s are counted in the database (rows written during the run). Baselines: the same
    writes (usage row, quota upsert, conditional debit, ledger row, settle) as raw SQL over
    asyncpg with as many connections (no HTTP, auth, reads or audit), and the ledger's own
    `POST /api/credits/deduct` through the same core process (one debit, its ledger and audit
    rows: the ceiling for any endpoint that debits). Also: one client alone (latency), and
    `POST /api/usage/events/batch` with --batch-size new events per request from --batch-clients
    loops (events/s in the database, request latencies, every per-event status, and the CPU time
    per event of the core process and of PostgreSQL's backends: a cost the machine's other load
    does not move as it moves throughput). The batch's own floor: the batch writer's statements
    alone (`batch_floor`: made-up rows of the same shape, over as many connections as core has
    usage writers, no HTTP, pricing or decisions), i.e. what PostgreSQL does for these rows here.
(b) Reports on 1,000,000 usage rows: seeded in SQL (generate_series, one transaction) for
    fresh users over the last 60 days, each event with its ledger debit and a chained
    balanceAfter (reconcile stays clean), skewed like real traffic (a few heavy users, each
    mostly on one model). The rollup job then runs in this process (timed), and one core
    process answers, each timed over --repeat sequential requests (median and p95):
      - billing report of ONE user over 30 days (the heaviest user, and a median one);
      - usage summary (groupBy=model) of that user over 30 days;
      - analytics overview over the whole table, from the rollups (core started with
        AIHUB_REPORT_SYNC_MAX_DAYS=90 so that 60 days are answered directly), the same with
        the rollups switched off (raw rows), and as a background job (202, poll, download).
    Baselines: the same aggregates as plain SQL on the raw table, timed directly over asyncpg.

The machine is shared: every figure is printed next to its baseline from the same run, with
the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from aihub.config import Settings
from aihub.kit.jwt import TokenCodec

# The ledger bench's helpers (database, process and wrk plumbing), imported from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.ledger.bench_deduct import (
    AIHUB,
    PG_ADMIN,
    REDIS_URL,
    START_BALANCE,
    create_database,
    drop_database,
    dsn,
    free_port,
    http_case,
    percentile,
    reconcile,
    run_aiohttp,
    run_wrk,
    seed,
    wait_healthy,
)

HERE = Path(__file__).resolve().parent
DAY = 86_400


# ---------------------------------------------------------------- (a) ingestion


async def prepare_ingest(db: str, users: int) -> list[str]:
    """Funded users with role `user`, and a daily quota on that role (so the quota path runs)."""
    ids = await seed(db, users)
    conn = await asyncpg.connect(dsn(db))
    try:
        await conn.execute(
            "INSERT INTO user_roles (user_id, role_name, created_at) SELECT id, 'user', now() FROM users"
        )
        # quota_limits (migration 0016): the old `quotas` table is no longer read.
        await conn.execute(
            "INSERT INTO quota_limits (scope, position, period, model, max_credits, max_tokens, max_requests,"
            " created_at, updated_at)"
            " VALUES ('role:user', 0, 'day', '', 1000000000000, 1000000000000, 1000000000, now(), now())"
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return ids


async def count_events(db: str) -> int:
    conn = await asyncpg.connect(dsn(db))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM usage_events"))
    finally:
        await conn.close()


def event_body(ids: list[str], clients: int, run: str) -> Callable[[int, int], dict[str, Any]]:
    def body(offset: int, n: int) -> dict[str, Any]:
        return {
            "requestId": f"{run}-{offset}-{n}",
            "userId": ids[(offset + n * clients) % len(ids)],
            "provider": "openai",
            "model": "gpt-4o-mini",
            "inputTokens": 1200,
            "outputTokens": 300,
        }

    return body


async def ingest_case(db: str, url: str, ids: list[str], token: str, clients: int, seconds: int) -> tuple[float, str]:
    run = uuid.uuid4().hex[:8]
    before = await count_events(db)
    started = time.monotonic()
    if shutil.which("wrk"):
        output = await asyncio.to_thread(
            run_wrk, url, ids, token, clients, seconds, HERE / "events.lua", {"BENCH_RUN": run}
        )
    else:
        output = await run_aiohttp(f"{url}/api/usage/events", token, clients, seconds, event_body(ids, clients, run))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # let in-flight requests commit before counting
    return (await count_events(db) - before) / elapsed, output


BATCH_MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
]


async def batch_case(
    db: str, url: str, ids: list[str], token: str, clients: int, seconds: int, size: int
) -> tuple[float, list[float], dict[int, int]]:
    """``POST /api/usage/events/batch`` with ``size`` new events per request from ``clients`` loops
    (aiohttp: a few large requests a second). Events/s counted in the database; the request
    latencies (s) and every per-event status."""
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    before = await count_events(db)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def client(offset: int) -> None:
        n = 0
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            while time.monotonic() < deadline:
                n += 1
                events = []
                for i in range(size):
                    provider, model = BATCH_MODELS[rng.randrange(len(BATCH_MODELS))]
                    events.append(
                        {
                            "requestId": f"{run}-{offset}-{n}-{i}",
                            "userId": ids[rng.randrange(len(ids))],
                            "provider": provider,
                            "model": model,
                            "inputTokens": rng.randint(0, 4000),
                            "outputTokens": rng.randint(0, 1000),
                        }
                    )
                started = time.monotonic()
                async with http.post(f"{url}/api/usage/events/batch", json={"events": events}) as response:
                    body = await response.json()
                latencies.append(time.monotonic() - started)
                if response.status != 200:
                    statuses[response.status * 1000] = statuses.get(response.status * 1000, 0) + 1
                    continue
                for item in body["results"]:
                    statuses[item["status"]] = statuses.get(item["status"], 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)
    return (await count_events(db) - before) / elapsed, latencies, statuses


async def batch_floor(db: str, ids: list[str], seconds: float, size: int, conns: int) -> float:
    """The batch writer's own statements with nothing around them: the database's speed for
    these rows. Each of ``conns`` connections owns a disjoint slice of the users (as the
    writers do) and loops over transactions of ``size`` made-up events: lock the accounts,
    count the events (the counter upsert), insert the usage rows, then the writer's settle step
    (``ledger.engine.settle``): lock the audit heads, link two audit rows per event, apply the
    debits, append the ledger and audit rows (COPY at this size), move the heads.
    No HTTP, no pricing, no decisions, no replay reads: events/s."""
    from aihub.core.ledger import repository as repo
    from aihub.core.ledger.engine import Linkable, settle
    from aihub.core.ledger.usage import Part, _chain, _event_ids, part_of
    from aihub.core.usage import limits
    from aihub.kit.ids import uuid4s

    pool = await asyncpg.create_pool(dsn(db), min_size=conns, max_size=conns)
    price = await pool.fetchval("SELECT id FROM model_prices WHERE provider = 'openai' AND model = 'gpt-4o-mini'")
    users = [uuid.UUID(i) for i in ids]
    slices = [[u for u in users if part_of(u, conns) == k] for k in range(conns)]
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        rng = random.Random(k)
        mine = slices[k]
        async with pool.acquire() as conn:
            while time.monotonic() < deadline:
                now = dt.datetime.now(dt.UTC)
                picked = [mine[rng.randrange(len(mine))] for _ in range(size)]
                windows = limits.window_of_all(now)
                adds: dict[tuple[str, str], limits.Amounts] = {}
                for user in picked:
                    for model in (limits.ALL_MODELS, "openai/gpt-4o-mini"):
                        adds[(f"u:{user}", model)] = limits.plus(
                            adds.get((f"u:{user}", model), limits.ZERO), (1, 1500, 1)
                        )
                increments = [(s, m, c, t, r) for (s, m), (c, t, r) in sorted(adds.items())]
                ids_ = iter(uuid4s(3 * size))
                event_ids = iter(_event_ids(size, Part(k, conns)))
                async with conn.transaction():
                    locked = await repo.lock_accounts(conn, sorted(set(picked)))
                    balance = {u: int(r["balance"]) for u, r in locked.items()}
                    # The writer's counting: the wide rows, then (after a rollover) the narrow ones.
                    narrow = limits.Narrow()
                    for returned in await repo.add_windows(conn, increments, windows):
                        limits.landing(returned, windows, adds[(returned[0], returned[1])], narrow)
                    if narrow.rows:
                        await repo.add_counters(conn, narrow.sorted(), [])
                    events: list[tuple[Any, ...]] = []
                    ledger_rows: list[tuple[Any, ...]] = []
                    audit_rows: list[Linkable] = []
                    deltas: dict[uuid.UUID, int] = {}
                    for user in picked:
                        (event_id, _text), tid, a1, a2 = next(event_ids), next(ids_), next(ids_), next(ids_)
                        balance[user] -= 1
                        deltas[user] = deltas.get(user, 0) - 1
                        events.append(
                            (
                                event_id,
                                f"floor-{event_id.hex}",
                                "h",
                                user,
                                "openai",
                                "gpt-4o-mini",
                                price,
                                1200,
                                300,
                                None,
                                1,
                                "bench",
                                None,
                                now,
                                tid,
                                balance[user],
                            )
                        )
                        ledger_rows.append((tid, user, -1, "usage", balance[user], None, None, None, "bench", now))
                        for row_id, kind, entity in (
                            (a1, "credits.debit.usage", "credit_account"),
                            (a2, "usage.record", "usage_event"),
                        ):
                            content = f'{{"id":"{row_id}","action":"{kind}","entity":"{user}"}}'
                            chain = _chain(entity, str(user if entity == "credit_account" else event_id))
                            columns = (row_id, "bench", "service", kind, entity, str(user), None, "{}", None, None, now)
                            audit_rows.append((chain, content, columns))
                    await repo.insert_events(conn, events)
                    # The writer's own settle step (linking the chains, the balances, the rows).
                    await settle(conn, deltas, {}, now, ledger_rows, audit_rows)
                done += size

    started = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(conns)))
    rate = done / (time.monotonic() - started)
    await pool.close()
    return rate


class CpuMeter:
    """CPU seconds (user + system) of the core process and of the PostgreSQL backends serving the
    bench database, with the usage rows written: a cost per event that does not depend on what
    else the machine runs meanwhile (throughput does). Needs /proc and a local PostgreSQL."""

    def __init__(self, db: str, core_pid: int) -> None:
        self.db, self.core_pid = db, core_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def _cpu(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self.tick

    async def read(self) -> tuple[int, float, dict[int, float]]:
        conn = await asyncpg.connect(dsn(self.db))
        try:
            events = int(await conn.fetchval("SELECT count(*) FROM usage_events"))
            pids = [
                int(r[0])
                for r in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.db
                )
            ]
        finally:
            await conn.close()
        found = {pid: self._cpu(pid) for pid in pids}
        found[-1] = self._cpu(os.getpid())  # this process: the load generator
        return events, self._cpu(self.core_pid), found

    @staticmethod
    def per_event(before: tuple[int, float, dict[int, float]], after: tuple[int, float, dict[int, float]]) -> str:
        events = after[0] - before[0]
        if events <= 0:
            return "cpu per event: n/a"
        core = after[1] - before[1]
        pg = sum(seconds - before[2].get(pid, 0.0) for pid, seconds in after[2].items() if pid != -1)
        client = after[2][-1] - before[2][-1]
        return (
            f"cpu per event: core {core / events * 1e6:.0f} us, PostgreSQL {pg / events * 1e6:.0f} us"
            f" (load generator {client / events * 1e6:.0f} us)"
        )


async def ingest_baseline(db: str, ids: list[str], clients: int, seconds: float) -> float:
    """The event's writes as raw SQL: usage row, quota upsert, debit, ledger row, settle."""
    pool = await asyncpg.create_pool(dsn(db), min_size=clients, max_size=clients)
    keys = [uuid.UUID(i) for i in ids]
    price_id = await pool.fetchval(
        "SELECT id FROM model_prices WHERE provider = 'openai' AND model = 'gpt-4o-mini' AND effective_to IS NULL"
    )
    period = f"d:{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        n = offset
        async with pool.acquire() as conn:
            while time.monotonic() < deadline:
                n = (n + clients) % len(keys)
                user, event_id, txn_id = keys[n], uuid.uuid4(), uuid.uuid4()
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO usage_events (id, request_id, request_hash, user_id, provider, model, price_id,"
                        " input_tokens, output_tokens, credits, reporter_id, created_at)"
                        " VALUES ($1, $2, 'h', $3, 'openai', 'gpt-4o-mini', $4, 1200, 300, 1, 'bench', now())",
                        event_id,
                        f"base-{event_id.hex}",
                        user,
                        price_id,
                    )
                    await conn.execute(
                        "INSERT INTO quota_counters (user_id, period_key, credits, tokens, requests)"
                        " VALUES ($1, $2, 1, 1500, 1) ON CONFLICT (user_id, period_key) DO UPDATE SET"
                        " credits = quota_counters.credits + 1, tokens = quota_counters.tokens + 1500,"
                        " requests = quota_counters.requests + 1 WHERE quota_counters.credits + 1 <= 1000000000000",
                        user,
                        period,
                    )
                    balance = await conn.fetchval(
                        "UPDATE credit_accounts SET balance = balance - 1, updated_at = now()"
                        " WHERE user_id = $1 AND balance - reserved >= 1 RETURNING balance",
                        user,
                    )
                    await conn.execute(
                        "INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)"
                        " VALUES ($1, $2, -1, 'debit', 'usage', $3, now())",
                        txn_id,
                        user,
                        balance,
                    )
                    await conn.execute(
                        "UPDATE usage_events SET transaction_id = $2, balance_after = $3 WHERE id = $1",
                        event_id,
                        txn_id,
                        balance,
                    )
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    rate = done / (time.monotonic() - started)
    await pool.close()
    return rate


# ---------------------------------------------------------------- (b) seeding 1M rows


def seed_statements(users: int, rows: int, days: int, funded_at: dt.datetime) -> list[tuple[str, tuple[Any, ...]]]:
    """The seeding SQL (integers are inlined: CREATE TABLE AS takes no parameters)."""
    users, rows, days, start = int(users), int(rows), int(days), int(START_BALANCE)
    return [
        # Fresh users n = 0..U-1, funded before any of their usage.
        (f"CREATE TEMP TABLE bu AS SELECT n, gen_random_uuid() AS id FROM generate_series(0, {users - 1}) AS n", ()),
        (
            "INSERT INTO users (id, email, verified, status, created_at, updated_at)"
            " SELECT id, 'seed-' || n || '@example.com', true, 'active', $1, $1 FROM bu",
            (funded_at,),
        ),
        ("INSERT INTO user_roles (user_id, role_name, created_at) SELECT id, 'user', $1 FROM bu", (funded_at,)),
        (
            "INSERT INTO credit_accounts (user_id, balance, reserved, created_at, updated_at)"
            f" SELECT id, {start}, 0, $1, $1 FROM bu",
            (funded_at,),
        ),
        (
            "INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)"
            f" SELECT gen_random_uuid(), id, {start}, 'credit', 'purchase', {start}, $1 FROM bu",
            (funded_at,),
        ),
        # The token-priced models, numbered 0..M-1.
        (
            "CREATE TEMP TABLE bp AS SELECT (row_number() OVER (ORDER BY provider, model) - 1)::int AS k, id,"
            " provider, model, input_per_1k, output_per_1k, per_request FROM model_prices"
            " WHERE effective_to IS NULL AND per_second = 0",
            (),
        ),
        # R events: user n skewed towards 0 (random()^3), 80% on the user's own model, uniform in
        # time over the last D days; credits priced as the pricing service does (ceil of the cost).
        (
            "CREATE TEMP TABLE be AS SELECT gen_random_uuid() AS id, s.g, u.id AS user_id, p.id AS price_id,"
            " p.provider, p.model, s.it, s.ot, ceil(s.it / 1000.0 * p.input_per_1k + s.ot / 1000.0 * p.output_per_1k"
            " + p.per_request)::bigint AS credits, s.ts AS created_at"
            f" FROM (SELECT g, floor({users} * power(random(), 3))::int AS n, random() < 0.8 AS fav,"
            " random() AS rk, floor(random() * 4000)::bigint AS it, floor(random() * 1000)::bigint AS ot,"
            f" now() - random() * make_interval(days => {days}) AS ts FROM generate_series(1, {rows}) AS g) AS s"
            " JOIN bu u ON u.n = s.n"
            " JOIN bp p ON p.k = CASE WHEN s.fav THEN s.n % (SELECT count(*) FROM bp)::int"
            " ELSE floor(s.rk * (SELECT count(*) FROM bp))::int END",
            (),
        ),
        # Each event's debit, with the balance after it chained in time order per account.
        (
            f"CREATE TEMP TABLE bl AS SELECT id, user_id, credits, created_at, {start}::bigint"
            " - sum(credits) OVER (PARTITION BY user_id ORDER BY created_at, id) AS balance_after,"
            " CASE WHEN credits > 0 THEN gen_random_uuid() END AS txn_id FROM be",
            (),
        ),
        (
            "INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)"
            " SELECT txn_id, user_id, -credits, 'debit', 'usage', balance_after, created_at FROM bl"
            " WHERE credits > 0 ORDER BY user_id, created_at, id",
            (),
        ),
        (
            "INSERT INTO usage_events (id, request_id, request_hash, user_id, provider, model, price_id, input_tokens,"
            " output_tokens, credits, balance_after, transaction_id, reporter_id, created_at)"
            " SELECT be.id, 'seed-' || be.g, md5(be.g::text), be.user_id, be.provider, be.model, be.price_id, be.it,"
            " be.ot, be.credits, bl.balance_after, bl.txn_id, 'bench-seed', be.created_at"
            " FROM be JOIN bl ON bl.id = be.id",
            (),
        ),
        (
            f"UPDATE credit_accounts a SET balance = {start} - t.spent FROM (SELECT user_id, sum(credits) AS spent"
            " FROM be GROUP BY user_id) AS t WHERE a.user_id = t.user_id",
            (),
        ),
    ]


async def seed_usage(db: str, users: int, rows: int, days: int) -> float:
    """Seed in one transaction; returns the seconds it took."""
    funded_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days + 1)
    conn = await asyncpg.connect(dsn(db))
    started = time.monotonic()
    try:
        async with conn.transaction():
            for statement, params in seed_statements(users, rows, days, funded_at):
                await conn.execute(statement, *params)
        await conn.execute("VACUUM ANALYZE usage_events")
        await conn.execute("VACUUM ANALYZE credit_transactions")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.monotonic() - started


async def make_admin(db: str) -> str:
    admin = uuid.uuid4()
    conn = await asyncpg.connect(dsn(db))
    try:
        await conn.execute(
            "INSERT INTO users (id, email, verified, status, created_at, updated_at)"
            " VALUES ($1, 'bench-admin@example.com', true, 'active', now(), now())",
            admin,
        )
        await conn.execute("INSERT INTO user_roles (user_id, role_name, created_at) VALUES ($1, 'admin', now())", admin)
    finally:
        await conn.close()
    return str(admin)


async def run_rollups(db_url: str) -> float:
    """The rollup job's own code, as a worker runs it (here: the first run, a 60-day backfill)."""
    from aihub.core.usage.jobs import rollup
    from aihub.kit.runtime import Runtime

    runtime = Runtime.build(Settings(database_url=db_url, auto_migrate=False))
    started = time.monotonic()
    try:
        await rollup(runtime)
    finally:
        await runtime.close()
    return time.monotonic() - started


# ---------------------------------------------------------------- (b) timing


async def timed(call: Callable[[], Awaitable[Any]], repeat: int, warmup: int = 3) -> tuple[float, float]:
    """Median and p95 in milliseconds of ``repeat`` sequential calls, after ``warmup`` ones."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.95))]


def http_get(http: aiohttp.ClientSession, url: str, token: str, params: dict[str, str]) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        async with http.get(url, params=params, headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}: {body[:300]!r}")
            return body

    return call


def sql(pool: asyncpg.Pool, *statements: tuple[str, tuple[Any, ...]]) -> Callable[[], Awaitable[Any]]:
    async def call() -> None:
        async with pool.acquire() as conn:
            for statement, params in statements:
                await conn.fetch(statement, *params)

    return call


USAGE_BY_MODEL = (
    "SELECT provider, model, count(*), sum(input_tokens), sum(output_tokens), sum(credits) FROM usage_events"
    " WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY provider, model"
)
BILLING = (
    ("SELECT sum(amount) FROM credit_transactions WHERE user_id = $1 AND created_at < $2", "start"),
    ("SELECT sum(amount) FROM credit_transactions WHERE user_id = $1 AND created_at < $2", "end"),
    (
        "SELECT reason, sum(CASE WHEN amount > 0 THEN amount ELSE 0 END), sum(CASE WHEN amount < 0 THEN -amount"
        " ELSE 0 END), count(*) FROM credit_transactions WHERE user_id = $1 AND created_at >= $2 AND created_at < $3"
        " GROUP BY reason",
        "window",
    ),
    (USAGE_BY_MODEL, "window"),
)
OVERVIEW_RAW = [
    "SELECT count(*), sum(input_tokens), sum(output_tokens), sum(credits), count(DISTINCT user_id) FROM usage_events",
    "SELECT provider, model, count(*), sum(input_tokens), sum(output_tokens), sum(credits) FROM usage_events"
    " GROUP BY provider, model",
    "SELECT user_id, count(*), sum(credits) FROM usage_events GROUP BY user_id ORDER BY sum(credits) DESC LIMIT 10",
    "SELECT to_char(timezone('UTC', created_at), 'YYYY-MM-DD') AS d, count(*), sum(credits) FROM usage_events"
    " GROUP BY d ORDER BY d",
]
OVERVIEW_ROLLUP = [  # the overview's two scans, on the rollups only
    "SELECT day, provider, model, sum(requests), sum(input_tokens), sum(output_tokens), sum(credits)"
    " FROM usage_daily_model_rollups GROUP BY day, provider, model",
    "SELECT user_id, sum(requests), sum(input_tokens), sum(output_tokens), sum(credits), count(*) OVER ()"
    " FROM usage_daily_rollups GROUP BY user_id ORDER BY sum(credits) DESC, user_id LIMIT 10",
]


def billing_sql(
    pool: asyncpg.Pool, user: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> Callable[[], Awaitable[Any]]:
    params = {"start": (user, start), "end": (user, end), "window": (user, start, end)}
    return sql(pool, *((statement, params[kind]) for statement, kind in BILLING))


async def job_round_trip(http: aiohttp.ClientSession, url: str, token: str) -> float:
    """Overview as a background job: 202, poll every 50 ms, download. Milliseconds end to end."""
    headers = {"Authorization": f"Bearer {token}", "Prefer": "respond-async"}
    started = time.perf_counter()
    async with http.get(f"{url}/api/analytics/overview", headers=headers) as response:
        if response.status != 202:
            raise RuntimeError(f"expected 202, got {response.status}")
        job = await response.json()
    while True:
        async with http.get(f"{url}{job['url']}", headers=headers) as response:
            job = await response.json()
        if job["status"] in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.05)
    if job["status"] != "succeeded":
        raise RuntimeError(f"overview job failed: {job['error']}")
    async with http.get(f"{url}{job['downloadUrl']}", headers=headers) as response:
        await response.read()
    return (time.perf_counter() - started) * 1000


async def reports_part(db: str, db_url: str, env: dict[str, str], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    conn = await asyncpg.connect(dsn(db))
    seeded = await conn.fetchval("SELECT count(*) FROM users WHERE email = 'bench-admin@example.com'")
    await conn.close()
    if not seeded:
        seconds = await seed_usage(db, args.users, args.rows, args.days)
        lines.append(f"seeded {args.rows:,} usage rows (+ ledger rows) for {args.users:,} users: {seconds:.1f}s")
        rollup_seconds = await run_rollups(db_url)
        lines.append(f"rollup job, first run ({args.days}-day backfill): {rollup_seconds:.1f}s")
        await make_admin(db)
    rerun = await run_rollups(db_url)
    conn = await asyncpg.connect(dsn(db))
    events = int(await conn.fetchval("SELECT count(*) FROM usage_events"))
    rollup_rows = int(await conn.fetchval("SELECT count(*) FROM usage_daily_rollups"))
    ranked = [
        str(r["user_id"])
        for r in await conn.fetch(
            "SELECT user_id FROM usage_events WHERE reporter_id = 'bench-seed' GROUP BY user_id ORDER BY count(*) DESC"
        )
    ]
    admin = str(await conn.fetchval("SELECT id FROM users WHERE email = 'bench-admin@example.com'"))
    await conn.close()
    lines.append(f"{events:,} usage rows -> {rollup_rows:,} rollup rows; a nightly run (2 days again): {rerun:.1f}s")
    heavy, median_user = ranked[0], ranked[len(ranked) // 2]
    codec = TokenCodec.from_settings(Settings())

    def token(user_id: str, role: str) -> str:
        return codec.issue(sub=user_id, role=role, roles=[role], email=f"{user_id}@example.com")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [AIHUB, "serve", "core"], env={**env, "AIHUB_CORE_PORT": str(port), "AIHUB_REPORT_SYNC_MAX_DAYS": "90"}
    )
    pool = await asyncpg.create_pool(dsn(db), min_size=1, max_size=2)
    results: list[tuple[str, tuple[float, float], tuple[float, float] | None, str]] = []
    try:
        await wait_healthy(url, proc)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0)
        start = end - dt.timedelta(days=30)
        window = {"from": start.isoformat(), "to": end.isoformat()}
        async with aiohttp.ClientSession() as http:
            for label, user_id in (("heaviest user", heavy), ("median user", median_user)):
                conn = await pool.acquire()
                count = await conn.fetchval(
                    "SELECT count(*) FROM usage_events WHERE user_id = $1 AND created_at >= $2 AND created_at < $3",
                    uuid.UUID(user_id),
                    start,
                    end,
                )
                await pool.release(conn)
                user_token = token(user_id, "user")
                results.append(
                    (
                        f"billing report, {label} ({count:,} events/30d)",
                        await timed(http_get(http, f"{url}/api/billing/report", user_token, window), args.repeat),
                        await timed(billing_sql(pool, uuid.UUID(user_id), start, end), args.repeat),
                        "200",
                    )
                )
                results.append(
                    (
                        f"usage summary by model, {label}",
                        await timed(
                            http_get(http, f"{url}/api/usage/summary", user_token, {**window, "groupBy": "model"}),
                            args.repeat,
                        ),
                        await timed(sql(pool, (USAGE_BY_MODEL, (uuid.UUID(user_id), start, end))), args.repeat),
                        "200",
                    )
                )
            admin_token = token(admin, "admin")
            overview = http_get(http, f"{url}/api/analytics/overview", admin_token, {})
            raw_sql = await timed(sql(pool, *((s, ()) for s in OVERVIEW_RAW)), max(3, args.repeat // 4), warmup=1)
            results.append(
                (
                    f"analytics overview, all {events:,} rows (rollups)",
                    await timed(overview, args.repeat),
                    raw_sql,
                    "1000",
                )
            )
            results.append(
                (
                    "  the rollup queries alone (SQL)",
                    await timed(sql(pool, *((s, ()) for s in OVERVIEW_ROLLUP)), args.repeat),
                    None,
                    "",
                )
            )
            conn = await pool.acquire()
            mark = await conn.fetchval("SELECT complete_until FROM usage_rollup_state")
            await conn.execute("UPDATE usage_rollup_state SET complete_until = NULL")
            try:
                results.append(
                    (
                        "  overview with rollups off (raw rows)",
                        await timed(overview, max(3, args.repeat // 4), warmup=1),
                        raw_sql,
                        "",
                    )
                )
            finally:
                await conn.execute("UPDATE usage_rollup_state SET complete_until = $1", mark)
                await pool.release(conn)
            trips = sorted([await job_round_trip(http, url, admin_token) for _ in range(5)])
            results.append(("  overview as a job (202, poll, download)", (trips[2], trips[-1]), None, ""))
    finally:
        await pool.close()
        proc.terminate()
        proc.wait(timeout=30)
    lines.append(f"{'case':<52}{'HTTP median':>12}{'p95':>8}{'SQL baseline':>14}{'target':>8}   (ms)")
    for label, (median, p95), base, target in results:
        base_text = f"{base[0]:>14.1f}" if base else f"{'':>14}"
        lines.append(f"{label:<52}{median:>12.1f}{p95:>8.1f}{base_text}{target:>8}")
    return lines


# ---------------------------------------------------------------- main


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def latency_at(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def batch_only(
    db: str, db_url: str, url: str, ids: list[str], token: str, proc: subprocess.Popen[bytes], args: argparse.Namespace
) -> list[str]:
    """--only-batch: a short warm-up, then the batch case alone (e.g. while py-spy samples the core)."""
    print(f"core pid {proc.pid}", flush=True)
    await batch_case(db, url, ids, token, args.batch_clients, 2, args.batch_size)
    meter = CpuMeter(db, proc.pid)
    before = await meter.read()
    rate, latencies, statuses = await batch_case(db, url, ids, token, args.batch_clients, args.seconds, args.batch_size)
    cost = CpuMeter.per_event(before, await meter.read())
    proc.terminate()
    proc.wait(timeout=30)
    floor = await batch_floor(db, ids, args.seconds, 2 * args.batch_size, args.floor_conns)
    code, report = reconcile(db_url)
    return [
        f"(a) POST /api/usage/events/batch, {args.batch_size}/request, {args.batch_clients} clients:"
        f" {rate:.0f} events/s"
        f"   request p50 {latency_at(latencies, 0.5):.0f} ms, p99 {latency_at(latencies, 0.99):.0f} ms;"
        f" per-event statuses {statuses}",
        f"  {cost}",
        f"  the writer's statements alone ({args.floor_conns} connections, {2 * args.batch_size}/transaction):"
        f" {floor:.0f} events/s; ratio {rate / floor:.2f}",
        f"ledger reconcile exit code: {code}" + ("" if code == 0 else "\n" + report.strip()),
    ]


async def ingest_part(db: str, db_url: str, env: dict[str, str], args: argparse.Namespace) -> list[str]:
    ids = await prepare_ingest(db, args.ingest_users)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc: subprocess.Popen[bytes] | None = subprocess.Popen(
        [AIHUB, "serve", "core"], env={**env, "AIHUB_CORE_PORT": str(port)}
    )
    try:
        assert proc is not None
        await wait_healthy(url, proc)
        codec = TokenCodec.from_settings(Settings())
        token = codec.issue(sub="bench-mcp", typ="service", role="service", scopes=["usage:write"], ttl=None)
        if args.only_batch:
            return await batch_only(db, db_url, url, ids, token, proc, args)
        await ingest_case(db, url, ids, token, args.clients, 2)  # warm-up
        one_rate, one_output = await ingest_case(db, url, ids, token, 1, args.seconds)
        rate, output = await ingest_case(db, url, ids, token, args.clients, args.seconds)
        meter = CpuMeter(db, proc.pid)
        before = await meter.read()
        batch_rate, batch_latencies, batch_statuses = await batch_case(
            db, url, ids, token, args.batch_clients, args.seconds, args.batch_size
        )
        batch_cost = CpuMeter.per_event(before, await meter.read())
        # The ledger's own endpoint in the same process: the ceiling for anything that debits.
        deduct_token = codec.issue(sub="bench", typ="service", role="service", scopes=["credits:deduct"], ttl=None)
        deduct_rate, _ = await http_case(db, url, ids, deduct_token, args.clients, args.seconds)
        proc.terminate()
        proc.wait(timeout=30)
        proc = None
        base = await ingest_baseline(db, ids, args.clients, args.seconds)
        floor = await batch_floor(db, ids, args.seconds, 2 * args.batch_size, args.floor_conns)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    code, report = reconcile(db_url)
    ordered = sorted(batch_latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return [
        f"{'case':<52}{'events/s':>12}{'baseline/s':>14}{'ratio':>8}{'target':>8}",
        f"{'(a) POST /api/usage/events, 1 client':<52}{one_rate:>12.0f}{'':>14}{'':>8}"
        f"   p50 {percentile(one_output, '50%')} ms, p99 {percentile(one_output, '99%')} ms",
        f"{'(a) POST /api/usage/events, ' + str(args.clients) + ' clients':<52}{rate:>12.0f}{base:>14.0f}"
        f"{rate / base:>8.2f}{'1000':>8}"
        f"   p50 {percentile(output, '50%')} ms, p99 {percentile(output, '99%')} ms",
        f"{f'(a) POST /api/usage/events/batch, {args.batch_size}/request, {args.batch_clients} clients':<52}"
        f"{batch_rate:>12.0f}{base:>14.0f}{batch_rate / base:>8.2f}{'10000':>8}"
        f"   request p50 {at(0.5):.0f} ms, p99 {at(0.99):.0f} ms; per-event statuses {batch_statuses}",
        f"    {batch_cost}",
        f"{f'  the batch writer statements alone, {args.floor_conns} connections':<52}{floor:>12.0f}{'':>14}"
        f"{batch_rate / floor:>8.2f}   (the database's floor for these rows: the batch's ratio to it)",
        f"{'  POST /api/credits/deduct, same process':<52}{deduct_rate:>12.0f}{base:>14.0f}{deduct_rate / base:>8.2f}",
        f"ledger reconcile exit code: {code}" + ("" if code == 0 else "\n" + report.strip()),
        "--- load generator output ---",
        output.strip(),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--ingest-users", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-reports", action="store_true")
    parser.add_argument(
        "--floor-conns", type=int, default=2, help="connections of the batch floor (as core's usage writers)"
    )
    parser.add_argument("--only-batch", action="store_true", help="the ingest part's batch case alone (no baselines)")
    parser.add_argument(
        "--db-prefix", default="aihub_bench_usage", help="databases are <prefix>_<pid>_{ingest,reports}"
    )
    parser.add_argument(
        "--keep-reports-db",
        metavar="NAME",
        help="seed the reports database NAME once and keep it (later runs with the same NAME reuse it)",
    )
    parser.add_argument("--log-level", default="warning", help="core's AIHUB_LOG_LEVEL (info logs each request)")
    args = parser.parse_args()

    env = {
        **os.environ,
        "AIHUB_REDIS_URL": REDIS_URL,
        "AIHUB_LOG_LEVEL": args.log_level,
        "AIHUB_DB_POOL_SIZE": str(args.clients + 8),
    }
    print(f"=== usage benchmark; before: {load()} ===", flush=True)
    out: list[str] = []
    for part, runner, skip in (
        ("ingest", ingest_part, args.skip_ingest),
        ("reports", reports_part, args.skip_reports or args.only_batch),
    ):
        if skip:
            continue
        keep = part == "reports" and args.keep_reports_db
        db = keep or f"{args.db_prefix}_{os.getpid()}_{part}"
        db_url = "postgresql+asyncpg://" + dsn(db).split("://", 1)[1]
        part_env = {**env, "AIHUB_DATABASE_URL": db_url}
        if not (keep and await database_exists(db)):
            await create_database(db)
        try:
            subprocess.run([AIHUB, "migrate"], env=part_env, check=True, capture_output=True)
            lines = await runner(db, db_url, part_env, args)
        finally:
            if not keep:
                await drop_database(db)
        out += ["", f"--- {part} ---", *lines]
        print("\n".join(out[-len(lines) - 1 :]), flush=True)
    print(f"\n=== after: {load()} ===")


if __name__ == "__main__":
    asyncio.run(main())
