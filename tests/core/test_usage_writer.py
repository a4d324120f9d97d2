"""The usage batch writer: refused events count nothing, a requestId recorded meanwhile becomes a
replay, and the batch's rendered body is the response model's."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import httpx
import pytest

from aihub.core.audit import service as audit
from aihub.core.ledger import service as ledger_service
from aihub.core.ledger.engine import Outcome
from aihub.core.ledger.repository import COPY_FROM, ONE_STATEMENT_ROWS
from aihub.core.ledger.usage import (
    Part,
    UsageOp,
    UsageWriters,
    _audit_row,
    _chain,
    _created,
    _event_ids,
    apply_events,
    part_of,
)
from aihub.core.usage import schemas
from aihub.core.usage import service as usage
from aihub.kit.ids import uuid4s
from aihub.kit.jsonutil import dumps
from aihub.kit.runtime import Runtime
from aihub.models import UsageEvent
from tests.conftest import Caller, create_user
from tests.core.credits.helpers import account, assert_reconciled
from tests.core.ledger.helpers import audit_valid
from tests.core.test_usage import count, event, fund, reporter

URL = "/api/usage/events/batch"


def test_the_batch_body_is_what_the_response_model_renders() -> None:
    results = [
        {"request_id": "a", "status": 201, "id": uuid.uuid4(), "credits": 13, "balance": 0},
        {"request_id": "b", "status": 429, "code": "QUOTA_EXCEEDED", "message": "m", "details": {"model": None}},
        {"request_id": "c", "status": 404, "code": "ACCOUNT_NOT_FOUND", "message": "m", "details": None},
    ]
    model = schemas.UsageBatchOut.model_validate({"results": results})
    items = [schemas.BatchResult(**item) for item in results]  # type: ignore[arg-type]
    assert schemas.batch_body(items) == model.model_dump_json(by_alias=True, exclude_none=True).encode()


def test_bulk_ids_are_version_4_and_distinct() -> None:
    ids = uuid4s(1000)
    assert len(set(ids)) == 1000
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 and uuid.UUID(str(i)) == i for i in ids)


async def test_refused_events_count_nothing(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    user = await create_user(runtime)
    await fund(runtime, user.id, 30)
    quota = await client.put(
        f"/api/quotas/user:{user.id}", headers=admin.headers, json={"period": "day", "maxRequests": 3}
    )
    assert quota.status_code == 201
    events = [
        event(user, "c-1"),  # 13 → 17
        event(user, "c-2"),  # 13 → 4
        event(user, "c-3"),  # 13 > 4: 402, not counted
        event(user, "c-4", inputTokens=100, outputTokens=0),  # 1 → 3; the third request
        event(user, "c-5", inputTokens=100, outputTokens=0),  # a fourth: 429, not counted
    ]
    results = (await client.post(URL, headers=reporter(runtime), json={"events": events})).json()["results"]
    assert [r["status"] for r in results] == [201, 201, 402, 201, 429]
    mine = (await client.get("/api/usage/quota", headers=user.headers)).json()
    assert mine["used"] == {"credits": 27, "tokens": 4100, "requests": 3}
    assert await count(runtime, UsageEvent) == 3
    assert (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"] == 3


def _op(user_id: str, price_id: uuid.UUID, request_id: str, charge: int) -> UsageOp:
    return UsageOp(
        request_id=request_id,
        request_hash=f"hash-{request_id}",
        user_id=uuid.UUID(user_id),
        provider="openai",
        model="gpt-4o",
        price_id=price_id,
        input_tokens=10,
        output_tokens=0,
        duration_seconds=None,
        charge=charge,
        reporter_id="svc-test",
        metadata=None,
    )


@pytest.mark.postgres
@pytest.mark.parametrize("free", [0, COPY_FROM], ids=["insert", "copy"])
async def test_a_request_id_recorded_meanwhile_is_answered_as_its_replay(
    pg_runtime: Runtime, pg_url: str, free: int
) -> None:
    """Both ways the batch's rows go in: the INSERT skips the taken requestId; the COPY (a
    large batch) fails on it, is undone alone, and the INSERT goes on."""
    rt = pg_runtime
    user = await create_user(rt)
    await fund(rt, user.id, 100)
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    other, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        price_id = await other.fetchval(
            "SELECT id FROM model_prices WHERE provider = 'openai' AND model = 'gpt-4o' AND effective_to IS NULL"
        )
        first = uuid.uuid4()
        other_tx = other.transaction()
        await other_tx.start()  # another writer records race-1, and has not committed yet
        await other.execute(
            "INSERT INTO usage_events (id, request_id, request_hash, user_id, provider, model, price_id, input_tokens,"
            " output_tokens, credits, balance_after, reporter_id, created_at)"
            " VALUES ($1, 'race-1', 'hash-race-1', $2, 'openai', 'gpt-4o', $3, 10, 0, 7, 93, 'svc-test', now())",
            first,
            uuid.UUID(user.id),
            price_id,
        )
        ops = [_op(user.id, price_id, "race-1", 7), _op(user.id, price_id, "race-2", 5)]
        ops += [_op(user.id, price_id, f"free-{i}", 0) for i in range(free)]

        async def apply() -> dict[int, Outcome]:
            async with writer.transaction():
                return await apply_events(writer, ops)

        task = asyncio.ensure_future(apply())
        pid = writer.get_server_pid()
        while await other.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid) != "Lock":
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)  # until the batch's insert waits on race-1
        await other_tx.commit()
        outcomes = await task
    finally:
        await other.close()
        await writer.close()
    replay, recorded = outcomes[id(ops[0])], outcomes[id(ops[1])]
    assert replay.replayed and replay.view == usage.Recorded(first, "race-1", 7, 93)
    assert not recorded.replayed and isinstance(recorded.view, usage.Recorded) and recorded.view.balance == 95
    assert await account(rt, user.id) == (95, 0, 95)
    assert await count(rt, UsageEvent) == 2 + free
    await assert_reconciled(rt)


@pytest.mark.postgres
@pytest.mark.parametrize("events", [2, ONE_STATEMENT_ROWS // 3 + 1], ids=["one-statement", "copy"])
async def test_a_batch_settles_the_same_in_one_statement_or_by_copy(
    pg_runtime: Runtime, pg_url: str, events: int
) -> None:
    """Both ways the money, ledger and audit rows go in (three rows per charged event): the
    balance each event answers is its ledger row's, in the order given, the chains whole."""
    rt = pg_runtime
    user = await create_user(rt)
    await fund(rt, user.id, 1_000)
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    try:
        price_id = await conn.fetchval(
            "SELECT id FROM model_prices WHERE provider = 'openai' AND model = 'gpt-4o' AND effective_to IS NULL"
        )
        ops = [_op(user.id, price_id, f"settle-{i}", 1 + i % 3) for i in range(events)]
        async with conn.transaction():
            outcomes = await apply_events(conn, ops)
        ledger = await conn.fetch(
            "SELECT amount, balance_after, metadata->>'requestId' AS request_id FROM credit_transactions"
            " WHERE user_id = $1 AND reason = 'usage' ORDER BY seq",
            uuid.UUID(user.id),
        )
    finally:
        await conn.close()
    views = [outcomes[id(op)].view for op in ops]
    balances = [view.balance for view in views if isinstance(view, usage.Recorded)]
    assert len(balances) == events
    assert [row["request_id"] for row in ledger] == [op.request_id for op in ops]
    assert [row["balance_after"] for row in ledger] == balances
    assert [-row["amount"] for row in ledger] == [op.charge for op in ops]
    assert await account(rt, user.id) == (balances[-1], 0, balances[-1])
    await assert_reconciled(rt)
    assert await audit_valid(rt)


@pytest.mark.parametrize("before", [None, {"balance": 120}])
def test_the_writer_builds_audit_rows_as_the_audit_service_does(before: dict[str, int] | None) -> None:
    """The writer's own audit rows (no generic scrub and copy) are the rows, chain and hashed
    content that ``audit.pending_row(audit.new_entry(...))`` makes of the same entry."""
    op = _op(str(uuid.uuid4()), uuid.uuid4(), "audit-1", 7)
    op.actor, op.request, op.ip = audit.Actor(id="svc-mcp", type="service"), "req-9", "10.0.0.7"
    row_id, now = uuid.uuid4(), dt.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=dt.UTC)
    after = {"balance": 113, "reserved": 5, "transactionId": str(uuid.uuid4())}
    chain, content, columns = _audit_row(
        op, row_id, "credits.debit.usage", "credit_account", str(op.user_id), before, after, now, _created(now)
    )
    entry = audit.new_entry(op.actor, "credits.debit.usage", "credit_account", op.user_id, before=before, after=after)
    expected = audit.pending_row(entry, "req-9", "10.0.0.7", now, row_id)
    assert (chain, content) == (expected.chain, expected.content)
    assert columns == (
        expected.id,
        expected.actor_id,
        expected.actor_type,
        expected.action,
        expected.entity_type,
        expected.entity_id,
        None if expected.before is None else dumps(expected.before).decode(),
        dumps(expected.after).decode(),
        expected.request_id,
        expected.ip,
        expected.created_at,
    )


def test_each_writer_draws_event_ids_of_its_own_audit_chains() -> None:
    """Writers of disjoint users must not queue on each other's audit chain heads: a user's
    debits chain by the user's account (``part_of``), a writer's events by ids drawn for it."""
    for writers in (1, 2, 3):
        for index in range(writers):
            drawn = _event_ids(50, Part(index, writers))
            assert len({event_id for event_id, _text in drawn}) == 50
            assert all(text == str(event_id) for event_id, text in drawn)
            assert {_chain("usage_event", text) % writers for _event_id, text in drawn} == {index}
    users = [uuid.uuid4() for _ in range(200)]
    assert {part_of(user, 2) for user in users} == {0, 1}
    assert all(part_of(user, 2) == _chain("credit_account", str(user)) % 2 for user in users)


@pytest.mark.postgres
async def test_two_writers_split_the_users_and_answer_in_the_order_given(pg_runtime: Runtime) -> None:
    """One batch over many users through two writers: each event answered in its place, each
    writer committing its own users' events, the money and the audit chains whole."""
    rt = pg_runtime
    by_part: list[list[Caller]] = [[], []]
    while min(len(found) for found in by_part) < 6:  # six users of each writer
        user = await create_user(rt)
        by_part[part_of(uuid.UUID(user.id), 2)].append(user)
    users = by_part[0][:6] + by_part[1][:6]
    for user in users:
        await fund(rt, user.id, 40)
    pool = ledger_service._usage_pool(rt)
    async with pool.connect() as conn:  # plans for its arguments: no generic plan outlives a table's growth
        assert (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    writers = UsageWriters(pool, 2)
    try:
        async with rt.engine.connect() as conn:
            price_id = (
                await conn.exec_driver_sql(
                    "SELECT id FROM model_prices WHERE provider = 'openai' AND model = 'gpt-4o'"
                    " AND effective_to IS NULL"
                )
            ).scalar_one()
        ops = [_op(users[i % 12].id, price_id, f"split-{i}", 9) for i in range(60)]  # 5 each: 4 paid, 1 short
        outcomes = await writers.submit_many(ops)
        assert [o.status_code for o in outcomes] == [201] * 48 + [402] * 12
        for op, outcome in zip(ops, outcomes, strict=True):
            if outcome.error is None:
                assert isinstance(outcome.view, usage.Recorded) and outcome.view.request_id == op.request_id
        per_writer = [sum(writer.committed.values()) for writer in writers.parts]
        assert all(done > 0 for done in per_writer)  # both wrote
        assert sum(writers.committed.values()) == 60 and writers.retried_batches == 0
        for user in users:
            assert await account(rt, user.id) == (4, 0, 4)
    finally:
        await writers.close()
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_a_new_price_applies_to_the_next_event_and_a_removed_model_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    """Events are priced where they are applied (the writer's batch, on PostgreSQL): the price
    in force then, whichever path, single or batch."""
    user = await create_user(runtime)
    await fund(runtime, user.id, 1000)
    url = "/api/pricing/mistral/writer-priced"
    assert (await client.put(url, headers=admin.headers, json={"inputPer1k": 2, "outputPer1k": 0})).status_code == 201
    body = event(user, "p-1", provider="mistral", model="writer-priced", inputTokens=1000, outputTokens=0)
    first = await client.post("/api/usage/events", headers=reporter(runtime), json=body)
    assert (first.status_code, first.json()["credits"]) == (201, 2)
    assert (await client.put(url, headers=admin.headers, json={"inputPer1k": 5, "outputPer1k": 0})).status_code == 200
    batch = [
        event(user, "p-2", provider="mistral", model="writer-priced", inputTokens=1000, outputTokens=0),
        event(user, "p-3", provider="mistral", model="never-priced", inputTokens=1000, outputTokens=0),
    ]
    results = (await client.post(URL, headers=reporter(runtime), json={"events": batch})).json()["results"]
    assert [(r["status"], r.get("credits"), r.get("code")) for r in results] == [
        (201, 5, None),
        (422, None, "UNKNOWN_MODEL"),
    ]
    assert results[1]["details"] == {"provider": "mistral", "model": "never-priced"}
    assert (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"] == 993
