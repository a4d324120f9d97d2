"""``aihub backup`` / ``aihub restore`` as the operator runs them (the CLI in a subprocess).

A database populated through the HTTP stack (users, grants, debits, holds captured, released
and still active, usage events) is backed up, restored into a fresh database, and the copy is
proven equal: the same row count in every table, the same balances per account, a clean
ledger reconcile and an intact audit chain. A damaged dump is refused before anything is
restored; a manifest that does not match the restored data fails the verification; a
non-empty target is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from aihub.config import Settings
from aihub.core.audit import service as audit
from aihub.kit.runtime import Runtime
from tests.conftest import _core_app, _counter, _pg_exec, _pg_url, create_user
from tests.core.credits.helpers import assert_reconciled, grant, money
from tests.ops.procs import aihub_env

pytestmark = pytest.mark.e2e
SECRET = "not-the-real-password-4711"  # trust auth ignores it; it must never be printed


def _aihub(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aihub", *args],
        env=aihub_env(AIHUB_DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def _with_password(url: str) -> str:
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.fixture
def fresh_pg() -> Iterator[Any]:
    """Empty databases (no schema at all), dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"aihub_t_{os.getpid()}_{next(_counter)}_restore"
        asyncio.run(_pg_exec(f"CREATE DATABASE {name}"))
        made.append(name)
        return _pg_url(name)

    yield make
    for name in made:
        asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _populate(url: str) -> None:
    rt = Runtime.build(Settings(env="test", database_url=url))
    try:
        admin = await create_user(rt, roles=["admin"])
        reporter = rt.codec.issue(sub="svc-mcp", typ="service", role="service", scopes=["usage:write"], ttl=None)
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            users = []
            for i in range(6):
                created = await client.post(
                    "/api/users", headers=admin.headers, json={"email": f"backup{i}@example.com"}
                )
                assert created.status_code == 201, created.text
                users.append(created.json()["id"])
            for i, user_id in enumerate(users):
                await grant(client, rt, user_id, 10_000 + i)
                debit = {"userId": user_id, "amount": 100 + i}
                assert (await client.post("/api/credits/deduct", json=debit, headers=money(rt))).status_code == 201
                holds = []
                for _ in range(3):
                    hold = {"userId": user_id, "amount": 50, "ttlSeconds": 600}
                    response = await client.post("/api/credits/holds", json=hold, headers=money(rt))
                    assert response.status_code == 201, response.text
                    holds.append(response.json()["id"])
                capture = await client.post(
                    f"/api/credits/holds/{holds[0]}/capture", json={"amount": 30}, headers=money(rt)
                )
                assert capture.status_code == 201, capture.text
                release = await client.post(f"/api/credits/holds/{holds[1]}/release", headers=money(rt))
                assert release.status_code == 200, release.text
                for n in range(4):
                    usage = {
                        "requestId": f"backup-{i}-{n}-{uuid.uuid4().hex[:8]}",
                        "userId": user_id,
                        "provider": "openai",
                        "model": "gpt-4o",
                        "inputTokens": 1000 + n,
                        "outputTokens": 500,
                    }
                    response = await client.post(
                        "/api/usage/events", json=usage, headers={"Authorization": f"Bearer {reporter}"}
                    )
                    assert response.status_code == 201, response.text
        await assert_reconciled(rt)
    finally:
        await rt.close()


async def _snapshot(url: str) -> dict[str, Any]:
    """Everything the test compares, read straight from a database."""
    rt = Runtime.build(Settings(env="test", database_url=url))
    try:
        async with rt.engine.connect() as conn:
            tables = [
                r[0] for r in await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            ]
            count = 'SELECT count(*) FROM "{}"'  # table names from the catalog, quoted
            counts = {t: (await conn.execute(text(count.format(t)))).scalar_one() for t in tables}
            balances = (
                await conn.execute(text("SELECT user_id, balance, reserved FROM credit_accounts ORDER BY user_id"))
            ).all()
        tx = rt.tx()
        try:
            chain = await audit.verify(tx)  # what GET /api/audit-logs/verify answers
        finally:
            await tx.close()
        return {"counts": counts, "balances": [tuple(row) for row in balances], "audit": dataclasses.asdict(chain)}
    finally:
        await rt.close()


def test_backup_then_restore_into_a_fresh_database_is_proven_equal(pg_url: str, fresh_pg: Any, tmp_path: Path) -> None:
    asyncio.run(_populate(pg_url))
    source = asyncio.run(_snapshot(pg_url))
    assert source["audit"]["checked"] > 0
    assert source["counts"]["usage_events"] == 24 and source["counts"]["credit_holds"] == 18
    assert source["audit"]["valid"] is True

    out = tmp_path / "backups"
    done = _aihub("backup", "--output", str(out), database_url=_with_password(pg_url))
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    [manifest_path] = out.glob("*.manifest.json")
    assert SECRET not in manifest_path.read_text()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["tables"] == source["counts"]
    assert manifest["ledger"]["totalBalance"] == sum(balance for _, balance, _ in source["balances"])
    assert manifest["ledger"]["transactions"] == source["counts"]["credit_transactions"]
    assert manifest["dump"]["format"] == "pg_dump custom" and len(manifest["dump"]["sha256"]) == 64
    assert manifest["alembicRevisions"]

    target = fresh_pg()
    done = _aihub("restore", str(out), "--target-url", _with_password(target), database_url=pg_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "ledger reconcile" in done.stdout and "MISMATCH" not in done.stdout
    restored = asyncio.run(_snapshot(target))
    assert restored == source  # row counts, every balance and reserve, and a valid audit chain

    async def reconciles() -> None:
        rt = Runtime.build(Settings(env="test", database_url=target))
        try:
            await assert_reconciled(rt)
        finally:
            await rt.close()

    asyncio.run(reconciles())

    again = _aihub("restore", str(manifest_path), "--target-url", target, database_url=pg_url)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_a_damaged_dump_or_a_wrong_manifest_is_refused(pg_url: str, fresh_pg: Any, tmp_path: Path) -> None:
    asyncio.run(_populate(pg_url))
    out = tmp_path / "backups"
    assert _aihub("backup", "--output", str(out), database_url=pg_url).returncode == 0
    [dump] = out.glob("*.dump")
    [manifest_path] = out.glob("*.manifest.json")
    original = dump.read_bytes()

    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    dump.write_bytes(bytes(damaged))
    target = fresh_pg()
    refused = _aihub("restore", str(dump), "--target-url", target, database_url=pg_url)
    assert refused.returncode == 1
    assert "checksum mismatch" in refused.stderr

    async def tables(url: str) -> int:
        rt = Runtime.build(Settings(env="test", database_url=url))
        try:
            async with rt.engine.connect() as conn:
                query = text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                return int((await conn.execute(query)).scalar_one())
        finally:
            await rt.close()

    assert asyncio.run(tables(target)) == 0  # nothing was restored

    # The dump is intact again but the manifest claims one more user than it holds.
    dump.write_bytes(original)
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"]["users"] += 1
    manifest_path.write_text(json.dumps(manifest))
    mismatch = _aihub("restore", str(out), "--target-url", target, database_url=pg_url)
    assert mismatch.returncode == 1, mismatch.stdout + mismatch.stderr
    assert "rows in users" in mismatch.stdout and "MISMATCH" in mismatch.stdout


def test_sqlite_backup_and_restore(sqlite_url: str, tmp_path: Path) -> None:
    """The embedded default: SQLite's online backup API, the same manifest and checks."""
    asyncio.run(_populate(sqlite_url))
    out = tmp_path / "backups"
    done = _aihub("backup", "--output", str(out), database_url=sqlite_url)
    assert done.returncode == 0, done.stderr
    [manifest_path] = out.glob("*.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["dump"]["format"] == "sqlite backup" and manifest["tables"]["usage_events"] == 24
    target = f"sqlite+aiosqlite:///{tmp_path / 'restored' / 'aihub.db'}"
    restored = _aihub("restore", str(out), "--target-url", target, database_url=sqlite_url)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "MISMATCH" not in restored.stdout
    refused = _aihub("restore", str(out), "--target-url", target, database_url=sqlite_url)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    forced = _aihub("restore", str(out), "--target-url", target, "--force", database_url=sqlite_url)
    assert forced.returncode == 0, forced.stdout + forced.stderr
