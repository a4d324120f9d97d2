"""Backup and restore time for a database with 1,000,000 usage rows.

Seeds a fresh, migrated PostgreSQL database with server-side SQL (``INSERT … SELECT
generate_series``): users with credit accounts, one grant per user, and for every usage event
a debit in the ledger whose ``balance_after`` chains, exactly as metering writes them, so the
restored ledger must reconcile. (No audit rows: the audit chain is hash-linked row by row.)

Then times, each next to its baseline measured in the same run:

* ``aihub backup`` (snapshot, row counts, ledger totals, pg_dump, SHA-256, manifest) against a
  bare ``pg_dump --format=custom`` of the same database;
* ``aihub restore`` into an empty database (checksum, pg_restore in one transaction, then row
  counts, ledger totals and the full ledger reconcile) against a bare
  ``pg_restore --single-transaction``; and ``aihub restore --jobs 2`` (parallel, not atomic).

    .venv/bin/python bench/backup.py [--rows 1000000] [--users 1000] [--prefix aihub_bench]

Databases ``<prefix>_backup_src``, ``_dst``, ``_base`` and ``_par`` are created on the server at
AIHUB_TEST_PG_DSN (default postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from aihub.config import Settings
from aihub.kit import migrate
from aihub.kit.db import create_engine
from aihub.ops.backup import backup, restore

PG_DSN = os.environ.get("AIHUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
GRANT = 10_000_000


def url_of(name: str) -> str:
    return PG_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name


def dsn_of(name: str) -> str:
    return PG_DSN.rsplit("/", 1)[0] + "/" + name


async def admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def seed(name: str, users: int, rows: int) -> float:
    engine = create_engine(Settings(database_url=url_of(name)))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    per_user = rows // users
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn_of(name))
    try:
        price = await conn.fetchrow("SELECT id, provider, model FROM model_prices ORDER BY provider, model LIMIT 1")
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO users (id, email, verified, status, created_at, updated_at)
                SELECT md5('user:' || u)::uuid, 'bench' || u || '@example.com', true, 'active', now(), now()
                FROM generate_series(1, $1) AS u
                """,
                users,
            )
            # Each user: one grant, then per_user debits of (1 + u % 7) credits, in seq order.
            await conn.execute(
                """
                INSERT INTO credit_accounts (user_id, balance, reserved, created_at, updated_at)
                SELECT md5('user:' || u)::uuid, $2 - $3 * (1 + u % 7), 0, now(), now()
                FROM generate_series(1, $1) AS u
                """,
                users,
                GRANT,
                per_user,
            )
            await conn.execute(
                """
                INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)
                SELECT md5('grant:' || u)::uuid, md5('user:' || u)::uuid, $2, 'credit', 'purchase', $2,
                       now() - interval '31 days'
                FROM generate_series(1, $1) AS u ORDER BY u
                """,
                users,
                GRANT,
            )
            await conn.execute(
                """
                INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)
                SELECT md5('debit:' || u || ':' || k)::uuid, md5('user:' || u)::uuid, -(1 + u % 7), 'debit',
                       'usage', $2 - k * (1 + u % 7), now() - interval '30 days' + k * interval '1 second'
                FROM generate_series(1, $1) AS u, generate_series(1, $3) AS k
                ORDER BY u, k
                """,
                users,
                GRANT,
                per_user,
            )
            await conn.execute(
                """
                INSERT INTO usage_events (id, request_id, request_hash, user_id, provider, model, price_id,
                    input_tokens, output_tokens, credits, balance_after, transaction_id, reporter_id, created_at)
                SELECT md5('usage:' || u || ':' || k)::uuid, 'bench-' || u || '-' || k, md5(u || ':' || k),
                       md5('user:' || u)::uuid, $4, $5, $6, 100 + k % 900, 50 + k % 300, 1 + u % 7,
                       $2 - k * (1 + u % 7), md5('debit:' || u || ':' || k)::uuid, 'svc-bench',
                       now() - interval '30 days' + k * interval '1 second'
                FROM generate_series(1, $1) AS u, generate_series(1, $3) AS k
                """,
                users,
                GRANT,
                per_user,
                price["provider"],
                price["model"],
                price["id"],
            )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


async def size_of(name: str) -> int:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return int(await conn.fetchval("SELECT pg_database_size($1)", name))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--prefix", default="aihub_bench")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    src, dst, base, par = (f"{args.prefix}_backup_{s}" for s in ("src", "dst", "base", "par"))
    names = (src, dst, base, par)
    await admin(*(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names), *(f"CREATE DATABASE {n}" for n in names))
    workdir = Path(tempfile.mkdtemp(prefix="aihub-bench-backup-"))
    try:
        seeded = await seed(src, args.users, args.rows)
        print(f"seeded {args.rows:,} usage rows (+ as many ledger rows) for {args.users:,} users in {seeded:.1f} s")
        print(f"database size {await size_of(src) / 1e6:,.0f} MB")
        settings = Settings(database_url=url_of(src))
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}

        bare_dump = timed(["pg_dump", "--format=custom", f"--file={workdir / 'bare.dump'}", src], env)
        result = await backup(settings, workdir / "out")
        print(f"\nbackup:  aihub backup {result.seconds:6.1f} s   baseline pg_dump -Fc {bare_dump:6.1f} s")
        print(f"         dump {result.data['dump']['bytes'] / 1e6:,.0f} MB, manifest {result.manifest.name}")

        bare_restore = timed(
            ["pg_restore", "--no-owner", "--single-transaction", f"--dbname={base}", str(workdir / "bare.dump")], env
        )
        restored = await restore(settings, workdir / "out", target_url=url_of(dst))
        assert restored.ok, restored.problems
        total = restored.restore_seconds + restored.verify_seconds
        print(
            f"restore: aihub restore {total:6.1f} s (load {restored.restore_seconds:.1f} s + verify and reconcile "
            f"{restored.verify_seconds:.1f} s)   baseline pg_restore --single-transaction {bare_restore:6.1f} s"
        )
        parallel = await restore(settings, workdir / "out", target_url=url_of(par), jobs=2)
        assert parallel.ok, parallel.problems
        print(
            f"         aihub restore --jobs 2: load {parallel.restore_seconds:.1f} s + verify "
            f"{parallel.verify_seconds:.1f} s; {restored.reconciled_accounts:,} accounts reconciled clean"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            await admin(*(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names))


if __name__ == "__main__":
    asyncio.run(main())
