"""SIGKILL of a real ``aihub serve core`` on PostgreSQL in the middle of concurrent deducts,
holds, captures and releases, then a restart: nothing is half-written.

Every write carries an Idempotency-Key. After the restart, before anything else runs:

* the ledger reconciles (balance == sum of the ledger, reserved == active holds, chains hold)
  and the audit chains verify;
* no key is left claimed without an outcome, and every key that got an answer before the kill
  has exactly that answer stored;
* the ledger's debit rows are exactly the debits named by the stored outcomes (deducts and
  captures), and the holds in the database exactly the holds the stored outcomes created;
  so no money moved without its idempotency record and no record exists without its money.

Then every request is sent again with its key: an answered one gets its first answer back
(replayed), an unanswered one is either replayed (it had committed) or runs now (it never
happened), and the ledger still reconciles.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from aihub.config import Settings
from aihub.core.audit.service import verify
from aihub.kit.jsonutil import loads
from aihub.kit.runtime import Runtime
from aihub.models import CreditHold, CreditTransaction
from tests.conftest import create_user, free_port
from tests.core.credits.helpers import account, assert_reconciled, money
from tests.ops.procs import Proc, aihub_env, start, wait_ready

pytestmark = pytest.mark.e2e
USERS = 6
CLIENTS = 16
FUNDS = 400  # small enough that some deducts and holds are refused (402) under the load
ANSWERS_BEFORE_KILL = 80


@dataclass
class Sent:
    key: str
    path: str
    body: dict[str, Any]
    status: int | None = None  # None: no answer (the process died first)
    answer: dict[str, Any] = field(default_factory=dict)


@dataclass
class Load:
    rt: Runtime
    url: str
    users: list[str]
    sent: list[Sent] = field(default_factory=list)
    answered: int = 0
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Sent:
        entry = Sent(f"kill9-{uuid.uuid4().hex}", path, body)
        self.sent.append(entry)
        response = await client.post(self.url + path, json=body, headers=money(self.rt, key=entry.key))
        entry.status, entry.answer = response.status_code, response.json()
        assert response.status_code in (200, 201, 402), response.text  # the load itself is healthy
        self.answered += 1
        if self.answered >= ANSWERS_BEFORE_KILL:
            self.enough.set()
        return entry

    async def client(self, seed: int) -> None:
        """Deducts and holds on random accounts; each granted hold is captured (partly) or released."""
        rng = random.Random(seed)
        async with httpx.AsyncClient(timeout=30) as client:
            try:
                while True:
                    user_id = rng.choice(self.users)
                    if rng.random() < 0.5:
                        await self.send(client, "/api/credits/deduct", {"userId": user_id, "amount": rng.randint(1, 9)})
                        continue
                    hold = await self.send(
                        client, "/api/credits/holds", {"userId": user_id, "amount": rng.randint(2, 9)}
                    )
                    if hold.status != 201:
                        continue
                    hold_id = hold.answer["id"]
                    if rng.random() < 0.6:
                        await self.send(client, f"/api/credits/holds/{hold_id}/capture", {"amount": 1})
                    else:
                        await self.send(client, f"/api/credits/holds/{hold_id}/release", {})
            except httpx.TransportError:
                return  # the process is gone; the request in flight stays unanswered


async def _stored(rt: Runtime) -> dict[str, tuple[int | None, bytes | None]]:
    async with rt.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT idem_key, status_code, body FROM idempotency_keys WHERE idem_key LIKE 'kill9-%'")
        )
        return {row.idem_key: (row.status_code, row.body) for row in rows}


async def _ledger_and_holds(rt: Runtime) -> tuple[set[str], set[str]]:
    async with rt.engine.connect() as conn:
        debits = await conn.execute(select(CreditTransaction.id).where(CreditTransaction.type == "debit"))
        holds = await conn.execute(select(CreditHold.id))
        return {str(r[0]) for r in debits}, {str(r[0]) for r in holds}


async def _audit_verifies(rt: Runtime) -> None:
    tx = rt.tx()
    try:
        result = await verify(tx)
    finally:
        await tx.close()
    assert result.valid and result.checked > 0, result


def _started(url: str, port: int, tmp_path: Path, redis_url: str) -> Proc:
    env = aihub_env(
        AIHUB_DATABASE_URL=url, AIHUB_REDIS_URL=redis_url, AIHUB_CORE_PORT=str(port), AIHUB_AUTO_MIGRATE="false"
    )
    return start("core", ["serve", "core"], env, tmp_path, port)


async def _nothing_half_written(rt: Runtime, load: Load) -> None:
    await assert_reconciled(rt)
    for user_id in load.users:
        balance, reserved, ledger_sum = await account(rt, user_id)
        assert balance == ledger_sum and 0 <= reserved <= balance
    await _audit_verifies(rt)

    stored = await _stored(rt)
    assert all(status is not None and body is not None for status, body in stored.values()), "a key left claimed"
    for entry in load.sent:
        if entry.status is not None:
            assert entry.key in stored and stored[entry.key][0] == entry.status, entry
    debits, holds = await _ledger_and_holds(rt)
    named_debits, created_holds = set(), set()
    for entry in load.sent:
        if entry.key not in stored or stored[entry.key][0] != 201:
            continue
        body = loads(stored[entry.key][1] or b"")
        if entry.path.endswith("/holds"):
            created_holds.add(body["id"])
        elif entry.path.endswith(("/deduct", "/capture")):  # both answer their debit row
            named_debits.add(body["id"])
    assert debits == named_debits
    assert holds == created_holds


async def _replay(load: Load, client: httpx.AsyncClient, entry: Sent, stored: dict[str, Any]) -> None:
    response = await client.post(load.url + entry.path, json=entry.body, headers=money(load.rt, key=entry.key))
    replayed = response.headers.get("idempotent-replayed") == "true"
    if entry.key in stored:  # committed: its first answer, whether or not the client saw it
        assert replayed, (entry, response.text)
        assert response.status_code == stored[entry.key][0]
        if entry.status is not None:
            assert response.status_code == entry.status
            if entry.status == 201:
                assert response.json() == entry.answer
    else:  # never done: it runs now, as a first request
        assert entry.status is None and not replayed, (entry, response.text)
        # 409: the hold it captures or releases was resolved (expired) meanwhile.
        assert response.status_code in (200, 201, 402, 409), response.text


async def _replayed(load: Load, stored: dict[str, tuple[int | None, bytes | None]]) -> None:
    """Every request again, CLIENTS at a time; a capture or release only after its hold's replay."""
    async with httpx.AsyncClient(timeout=30) as client:
        gate = asyncio.Semaphore(CLIENTS)

        async def one(entry: Sent) -> None:
            async with gate:
                await _replay(load, client, entry, stored)

        holds = [e for e in load.sent if not e.path.endswith(("/capture", "/release"))]
        await asyncio.gather(*(one(entry) for entry in holds))
        await asyncio.gather(*(one(entry) for entry in load.sent if entry not in holds))


async def test_sigkill_during_money_load_leaves_nothing_half_written(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    rt = Runtime.build(Settings(env="test", database_url=pg_url, redis_url=redis_url))
    port = free_port()
    core = _started(pg_url, port, tmp_path, redis_url)
    try:
        users = [(await create_user(rt)).id for _ in range(USERS)]
        await wait_ready(core)
        load = Load(rt, core.url, users)
        async with httpx.AsyncClient(timeout=30) as client:
            for user_id in users:
                await load.send(client, "/api/credits/grant", {"userId": user_id, "amount": FUNDS})
        clients = [asyncio.create_task(load.client(seed)) for seed in range(CLIENTS)]
        enough = asyncio.create_task(load.enough.wait())
        done, _ = await asyncio.wait([enough, *clients], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        for task in done - {enough}:
            task.result()  # a client that stopped before the kill: its failure, if it raised
        assert enough in done, "the load stopped or stalled before the kill"
        core.kill()  # SIGKILL: no drain, no shutdown hook
        await asyncio.gather(*clients)
        unanswered = [entry for entry in load.sent if entry.status is None]
        assert unanswered, "the kill found no request in flight"

        core = _started(pg_url, port, tmp_path, redis_url)
        await wait_ready(core)
        await _nothing_half_written(rt, load)
        load.url = core.url
        await _replayed(load, await _stored(rt))
        await assert_reconciled(rt)
    finally:
        core.kill()
        await rt.close()
