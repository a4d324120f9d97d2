"""`ledger reconcile` on a large PostgreSQL ledger: the old way (every row loaded into Python)
against the new one (one streamed statement; the database aggregates), same database, same run.

    flock /tmp/aihub-bench.lock .venv/bin/python bench/ledger/bench_reconcile.py \
        [--rows 1000000] [--accounts 10000] [--repeat 2]

Steps: a fresh database (migrated by `aihub migrate`), N users with accounts and ``rows``
ledger rows spread over them (each row's balance_after chaining on the one before, so the
ledger is clean), a few active holds. Then each way runs in its OWN child process (so one
way's heap cannot flatter or burden the other), which prints its wall time for the reconcile
call and its peak RSS (``ru_maxrss`` of that process, interpreter and imports included).
The shipped command, `aihub ledger reconcile`, is measured whole as well. Both ways must report
the same totals and zero mismatches; then one account is damaged and both must find exactly it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

PG_ADMIN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
AIHUB = str(Path(sys.executable).with_name("aihub"))
DB = "aihub_bench_reconcile"

# The child: runs one way of reconciling against AIHUB_DATABASE_URL and prints one JSON line.
CHILD = r"""
import asyncio, json, resource, sys, time, uuid
from dataclasses import dataclass, field

from sqlalchemy import func, select, text

from aihub.config import Settings
from aihub.core.credits.reconcile import reconcile
from aihub.kit.db import Tx, create_engine, create_sessionmaker


@dataclass(slots=True)
class OldCheck:
    user_id: uuid.UUID
    balance: int
    ledger_sum: int = 0
    rows: int = 0
    reserved: int = 0
    held: int = 0
    broken_at: uuid.UUID | None = None

    @property
    def ok(self):
        return self.balance == self.ledger_sum and self.reserved == self.held and self.broken_at is None


async def old_reconcile(session):
    from aihub.models import CreditAccount, CreditHold, CreditTransaction

    # main's reconcile before this change, verbatim in substance: every ledger row into Python.
    a = CreditAccount.__table__.c
    checks = {
        r.user_id: OldCheck(r.user_id, int(r.balance), reserved=int(r.reserved))
        for r in (await session.execute(select(a.user_id, a.balance, a.reserved).order_by(a.user_id))).all()
    }
    h = CreditHold.__table__.c
    held = select(h.user_id, func.sum(h.amount)).where(h.status == "held").group_by(h.user_id)
    for user_id, total in (await session.execute(held)).all():
        if user_id in checks:
            checks[user_id].held = int(total)
    t = CreditTransaction.__table__.c
    stmt = select(t.user_id, t.seq, t.id, t.amount, t.balance_after).order_by(t.user_id, t.seq)
    for row in (await session.execute(stmt)).all():
        check = checks[row.user_id]
        check.ledger_sum += int(row.amount)
        check.rows += 1
        if check.broken_at is None and int(row.balance_after) != check.ledger_sum:
            check.broken_at = row.id
    bad = [c for c in checks.values() if not c.ok]
    return len(checks), sum(c.rows for c in checks.values()), sum(c.balance for c in checks.values()), bad


async def main(way):
    # The old way as main's CLI ran it (a whole Runtime); the new one as the CLI runs it now.
    if way == "old":
        from aihub.kit.runtime import Runtime  # imported by the old way only: it weighs ~50 MB

        rt = Runtime.build(Settings(env="test"))
        session, close = rt.sessionmaker(), rt.close
    else:
        engine = create_engine(Settings(env="test", db_pool_size=1, db_pool_overflow=0))
        session, close = create_sessionmaker(engine)(), engine.dispose
    tx = Tx(session)
    try:
        await tx.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        started = time.perf_counter()
        if way == "old":
            accounts, rows, total, bad = await old_reconcile(tx.session)
        else:
            report = await reconcile(tx)
            accounts, rows, total, bad = report.accounts, report.rows, report.total_balance, report.mismatches
        seconds = time.perf_counter() - started
    finally:
        await tx.close()
        await close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"way": way, "seconds": seconds, "peak_mb": peak, "accounts": accounts, "rows": rows,
                      "total": total, "bad": sorted(str(c.user_id) for c in bad),
                      "broken_at": sorted(str(c.broken_at) for c in bad if c.broken_at)}))


asyncio.run(main(sys.argv[1]))
"""

_SEED = """
INSERT INTO users (id, email, verified, status, created_at, updated_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'bench-' || i || '@example.com',
       true, 'active', now(), now()
FROM generate_series(1, $1::int) AS i;

INSERT INTO credit_accounts (user_id, balance, reserved, created_at, updated_at)
SELECT id, 0, 0, now(), now() FROM users WHERE email LIKE 'bench-%';

-- rows round-robin over the accounts: row k of account a credits k credits, so the k-th
-- balance_after is k(k+1)/2 and the chain holds.
INSERT INTO credit_transactions (id, user_id, amount, type, reason, balance_after, created_at)
SELECT gen_random_uuid(), ('00000000-0000-4000-8000-' || lpad(to_hex(1 + (g % $1::int)), 12, '0'))::uuid,
       g / $1::int + 1, 'credit', 'purchase', (g / $1::int + 1) * (g / $1::int + 2) / 2, now()
FROM generate_series(0, $2::int - 1) AS g
ORDER BY g;

UPDATE credit_accounts a SET balance = s.total
FROM (SELECT user_id, sum(amount) AS total FROM credit_transactions GROUP BY user_id) s
WHERE s.user_id = a.user_id;
"""

_HOLDS = """
INSERT INTO credit_holds (id, user_id, amount, status, reason, expires_at, created_at)
SELECT gen_random_uuid(), user_id, 1, 'held', 'usage', now() + interval '1 hour', now()
FROM credit_accounts ORDER BY user_id LIMIT 100;
UPDATE credit_accounts SET reserved = 1 WHERE user_id IN (SELECT user_id FROM credit_holds);
"""


def dsn(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def seed(accounts: int, rows: int) -> None:
    conn = await asyncpg.connect(dsn(DB))
    try:
        for statement in _SEED.split(";\n\n"):
            # asyncpg binds parameters only in single statements.
            sql = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
            if sql:
                await conn.execute(sql, *[v for v, n in ((accounts, "$1"), (rows, "$2")) if n in sql])
        await conn.execute(_HOLDS)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def damage() -> str:
    """One account's balance moved beside its ledger, and one ledger row that does not chain."""
    conn = await asyncpg.connect(dsn(DB))
    try:
        user_id = await conn.fetchval("SELECT user_id FROM credit_accounts ORDER BY user_id OFFSET 7 LIMIT 1")
        await conn.execute("UPDATE credit_accounts SET balance = balance + 1 WHERE user_id = $1", user_id)
        return str(user_id)
    finally:
        await conn.close()


def run_child(way: str, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, way], env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{way} reconcile failed:\n{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# `aihub ledger reconcile` itself, as a grandchild: this wrapper's RUSAGE_CHILDREN is its peak.
CLI = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run([sys.argv[1], *(sys.argv[2:] or ["ledger", "reconcile"])], capture_output=True, text=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"way": "cli", "seconds": seconds, "peak_mb": peak, "exit": done.returncode, "out": done.stdout}))
"""


def run_cli(env: dict[str, str], *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CLI, AIHUB, *args], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def restore(env: dict[str, str]) -> None:
    """`aihub backup`, then `aihub restore` into an empty database: its verification reconciles
    the whole restored ledger (the damaged account included, so it must exit 1 naming it)."""
    target = DB + "_restored"
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)"))
    asyncio.run(admin(f"CREATE DATABASE {target}"))
    with tempfile.TemporaryDirectory() as out:
        try:
            subprocess.run([AIHUB, "backup", "-o", out], env=env, check=True, capture_output=True)
            url = dsn(target).replace("postgresql://", "postgresql+asyncpg://")
            done = run_cli(env, "restore", out, "--target-url", url)
        finally:
            asyncio.run(admin(f"DROP DATABASE IF EXISTS {target} WITH (FORCE)"))
    output = str(done["out"])
    assert done["exit"] == 1 and "1 mismatched" in output, output
    verification = next(line for line in output.splitlines() if "verification" in line and " s" in line)
    print(
        f"`aihub restore` (whole process): {float(str(done['seconds'])):.2f} s ({verification.strip()}), "
        f"peak RSS {float(str(done['peak_mb'])):.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each way (the best is shown)")
    parser.add_argument(
        "--restore", action=argparse.BooleanOptionalAction, default=True, help="also back up and restore"
    )
    parser.add_argument("--keep", action="store_true", help="leave the database for inspection")
    args = parser.parse_args()

    asyncio.run(admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
    asyncio.run(admin(f"CREATE DATABASE {DB}"))
    env = {**os.environ, "AIHUB_DATABASE_URL": dsn(DB).replace("postgresql://", "postgresql+asyncpg://")}
    env.pop("AIHUB_REDIS_URL", None)
    try:
        subprocess.run([AIHUB, "migrate"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        asyncio.run(seed(args.accounts, args.rows))
        print(
            f"seeded {args.rows:,} ledger rows over {args.accounts:,} accounts in {time.perf_counter() - started:.1f} s"
        )
        print(f"load average {os.getloadavg()[0]:.2f}")
        results: dict[str, list[dict[str, object]]] = {"old": [], "new": []}
        cli: list[dict[str, object]] = []
        for _ in range(args.repeat):
            for way in ("new", "old"):
                results[way].append(run_child(way, env))
            cli.append(run_cli(env))
        assert all(r["exit"] == 0 and "clean" in str(r["out"]) for r in cli), cli
        clean = {(r["accounts"], r["rows"], r["total"], len(r["bad"])) for rs in results.values() for r in rs}  # type: ignore[arg-type]
        assert len(clean) == 1 and next(iter(clean))[3] == 0, clean
        print(f"{'way':<5} {'seconds (best)':>15} {'peak RSS MB (max)':>18}")
        for way, runs in results.items():
            best = min(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
            peak = max(float(r["peak_mb"]) for r in runs)  # type: ignore[arg-type]
            print(f"{way:<5} {best:>15.2f} {peak:>18.1f}")
        old, new = results["old"], results["new"]
        ratio_t = min(float(r["seconds"]) for r in new) / min(float(r["seconds"]) for r in old)  # type: ignore[arg-type]
        ratio_m = max(float(r["peak_mb"]) for r in new) / max(float(r["peak_mb"]) for r in old)  # type: ignore[arg-type]
        print(
            f"`aihub ledger reconcile` (whole process, start-up included): "
            f"{min(float(r['seconds']) for r in cli):.2f} s, "  # type: ignore[arg-type]
            f"peak RSS {max(float(r['peak_mb']) for r in cli):.1f} MB"  # type: ignore[arg-type]
        )
        print(f"new/old: time {ratio_t:.2f}, peak RSS {ratio_m:.2f}; totals {next(iter(clean))[:3]}, clean")
        broken = asyncio.run(damage())
        found = {way: run_child(way, env)["bad"] for way in ("new", "old")}
        assert found["new"] == found["old"] == [broken], found
        print(f"damaged account {broken}: found by both")
        if args.restore:
            restore(env)
    finally:
        if not args.keep:
            asyncio.run(admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))


if __name__ == "__main__":
    main()
