"""Every money move through the ledger engine on PostgreSQL: holds, captures, releases, refunds
(the ledger's own acts) and the domains' Work moves (promo, Stripe, Sora, authorizations).

Each test reads the engine's ``committed`` tally (what its writer committed, by kind) before and
after the requests: a move that took the request-transaction path would leave it unchanged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import httpx
import pytest
from sqlalchemy import func, select

from aihub.config import Settings
from aihub.core.audit import service as audit
from aihub.core.authorizations import service as authorizations
from aihub.core.authorizations.schemas import AuthorizationOut
from aihub.core.credits import service as credits
from aihub.core.credits.repository import Entry, HoldState
from aihub.core.ledger import service as ledger
from aihub.core.ledger.engine import Capture, Hold, Move, Outcome, Refund, Release, Work
from aihub.core.promos import service as promos
from aihub.core.sora import service as sora
from aihub.kit.db import Tx
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog, CreditHold, CreditTransaction, PromoCode
from tests.conftest import LiveServer, _core_app, create_user, free_port
from tests.core.credits.helpers import (
    account,
    assert_error,
    assert_reconciled,
    assert_replays_byte_for_byte,
    money,
)
from tests.core.ledger.helpers import audit_valid, engine_of, funded
from tests.core.payments.conftest import Shop, checkout, deliver, put_package, stripe_settings
from tests.core.payments.fakes import FakeStripe, completed, refunded, signature

pytestmark = pytest.mark.postgres


def _render(view: object) -> bytes:
    return b"{}"


def _made_id(outcome: Outcome) -> uuid.UUID:
    """The id of the ledger row or hold a move made."""
    assert isinstance(outcome.view, Entry | HoldState), outcome
    return outcome.view.id


async def _count(rt: Runtime, model: type, *where: Any) -> int:
    async with rt.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(model).where(*where))).scalar_one())


@pytest.fixture
async def pg_client(pg_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_core_app(pg_runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as c:
        yield c


# ------------------------------------------------------------------ the ledger's own acts


async def test_holds_captures_releases_and_refunds_go_through_the_engine(
    pg_runtime: Runtime, pg_client: httpx.AsyncClient
) -> None:
    rt, client = pg_runtime, pg_client
    user = await funded(rt, 100)
    engine = engine_of(rt)
    before = Counter(engine.committed)
    headers = money(rt)
    held = await client.post("/api/credits/holds", json={"userId": user.id, "amount": 30}, headers=headers)
    assert held.status_code == 201, held.text
    assert (held.json()["status"], held.json()["amount"]) == ("held", 30)
    assert await account(rt, user.id) == (100, 30, 100)
    captured = await client.post(
        f"/api/credits/holds/{held.json()['id']}/capture", json={"amount": 20}, headers=headers
    )
    assert captured.status_code == 201, captured.text
    debit = captured.json()
    assert (debit["amount"], debit["reason"], debit["balanceAfter"]) == (-20, "hold_capture", 80)
    assert debit["relatedId"] == held.json()["id"]
    again = await client.post(f"/api/credits/holds/{held.json()['id']}/release", headers=headers)
    assert assert_error(again, 409, "HOLD_NOT_ACTIVE")["details"] == {"status": "captured"}
    second = await client.post("/api/credits/holds", json={"userId": user.id, "amount": 10}, headers=headers)
    released = await client.post(f"/api/credits/holds/{second.json()['id']}/release", headers=headers)
    assert released.status_code == 200, released.text
    assert (released.json()["status"], released.json()["captured"]) == ("released", None)
    part = await client.post("/api/credits/refund", json={"transactionId": debit["id"], "amount": 5}, headers=headers)
    assert (part.status_code, part.json()["amount"], part.json()["balanceAfter"]) == (201, 5, 85)
    rest = await client.post("/api/credits/refund", json={"transactionId": debit["id"]}, headers=headers)
    assert (rest.status_code, rest.json()["amount"]) == (201, 15)
    over = await client.post("/api/credits/refund", json={"transactionId": debit["id"], "amount": 1}, headers=headers)
    assert assert_error(over, 409, "REFUND_EXCEEDS_DEBIT")["details"] == {
        "debited": 20,
        "refundable": 0,
        "requested": 1,
    }
    done = engine.committed - before
    assert (done["hold"], done["capture"], done["release"], done["refund"]) == (2, 1, 2, 3)
    assert await account(rt, user.id) == (100, 0, 100)
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_a_replay_through_the_engine_answers_the_first_answers_bytes(
    pg_runtime: Runtime, pg_client: httpx.AsyncClient
) -> None:
    """The engine's moves: what a move made goes out through the endpoint's response model,
    and the body the batch stored under the key is that serialisation, byte for byte."""
    user = await create_user(pg_runtime)
    before = engine_of(pg_runtime).committed.copy()
    await assert_replays_byte_for_byte(pg_client, pg_runtime, user.id)
    # each first answer and its replay (the batch finds the key stored) went through the engine
    assert engine_of(pg_runtime).committed - before == Counter({"move": 2, "hold": 2, "release": 2})


async def test_the_hold_sweep_expires_through_the_engine(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    user = await funded(rt, 50)
    engine = engine_of(rt)
    [fresh, overdue] = await engine.submit_many(
        [
            Move(uuid.UUID(user.id), 0, "usage", _render, act=Hold(10, 600)),
            Move(uuid.UUID(user.id), 0, "usage", _render, act=Hold(15, 0)),  # due at once
        ]
    )
    assert fresh.view is not None and overdue.view is not None
    before = engine.committed["expire"]
    found, expired = await ledger.expire_holds(engine, rt, limit=10)
    assert (found, expired, engine.committed["expire"] - before) == (1, 1, 1)
    assert await account(rt, user.id) == (50, 10, 50)
    assert await _count(rt, CreditHold, CreditHold.status == "expired") == 1
    assert await audit_valid(rt)


# ------------------------------------------------------------------ the domains' Work moves


async def test_promo_sora_and_authorizations_go_through_the_engine(
    pg_runtime: Runtime, pg_client: httpx.AsyncClient
) -> None:
    rt, client = pg_runtime, pg_client
    admin = await create_user(rt, roles=["admin"])
    user = await funded(rt, 5_000, roles=["user"])
    engine = engine_of(rt)
    before = Counter(engine.committed)
    promo = await client.post("/api/promo-codes", json={"credits": 40, "maxRedemptions": 1}, headers=admin.headers)
    code = promo.json()["code"]
    redeemed = await client.post("/api/promo-codes/redeem", json={"code": code}, headers=user.headers)
    assert redeemed.status_code == 200, redeemed.text
    assert (redeemed.json()["credits"], redeemed.json()["balance"]) == (40, 5_040)
    token = (await client.post("/api/sora/sessions", headers=user.headers)).json()["sessionToken"]
    video = {"X-Session-Token": token}
    started = await client.post("/api/sora/generations", json={"durationSeconds": 10}, headers=video)
    assert started.status_code == 201, started.text
    gen = started.json()
    done = await client.post(f"/api/sora/generations/{gen['id']}/complete", json={"actualSeconds": 5}, headers=video)
    assert done.status_code == 200, done.text
    failed_start = await client.post("/api/sora/generations", json={"durationSeconds": 2}, headers=video)
    failed = await client.post(f"/api/sora/generations/{failed_start.json()['id']}/fail", headers=video)
    assert (failed.status_code, failed.json()["charged"]) == (200, 0)
    worst = {"provider": "openai", "model": "gpt-4o", "maxInputTokens": 1000, "maxOutputTokens": 1000}
    auth = (await client.post("/api/usage/authorizations", json=worst, headers=user.headers)).json()
    settled = await client.post(
        f"/api/usage/authorizations/{auth['id']}/settle",
        json={"requestId": "moves-1", "inputTokens": 500, "outputTokens": 500},
        headers=user.headers,
    )
    assert (settled.status_code, settled.json()["credits"]) == (201, 7)
    other = (await client.post("/api/usage/authorizations", json=worst, headers=user.headers)).json()
    cancelled = await client.post(f"/api/usage/authorizations/{other['id']}/cancel", headers=user.headers)
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    counted = engine.committed - before
    assert (counted["promo"], counted["sora"], counted["authorization"]) == (1, 4, 4)
    balance, reserved, total = await account(rt, user.id)
    assert (reserved, balance) == (0, total) and balance == 5_040 - done.json()["charged"] - 7
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_the_authorization_sweep_goes_through_the_engine(
    pg_runtime: Runtime, pg_client: httpx.AsyncClient
) -> None:
    rt, client = pg_runtime, pg_client
    user = await funded(rt, 100, roles=["user"])
    worst = {"provider": "openai", "model": "gpt-4o", "maxInputTokens": 1000, "maxOutputTokens": 1000, "ttlSeconds": 1}
    auth = (await client.post("/api/usage/authorizations", json=worst, headers=user.headers)).json()
    assert await account(rt, user.id) == (100, 13, 100)
    engine = engine_of(rt)
    before = engine.committed["authorization"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert await authorizations.expire_overdue(rt, now=later) == 1
    assert engine.committed["authorization"] - before == 1
    read = (await client.get(f"/api/usage/authorizations/{auth['id']}", headers=user.headers)).json()
    assert read["status"] == "expired"
    assert await account(rt, user.id) == (100, 0, 100)
    assert await audit_valid(rt)


async def test_a_stripe_payment_credits_through_the_engine(pg_settings: Settings) -> None:
    fake_stripe = FakeStripe(free_port())
    await fake_stripe.start()
    rt = Runtime.build(stripe_settings(pg_settings, fake_stripe))
    try:
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            shop = Shop(rt, client, fake_stripe, await create_user(rt, roles=["admin"]), await create_user(rt))
            await put_package(shop, credits=1000, amount=500)
            await checkout(shop)
            session = shop.stripe.sessions[list(shop.stripe.sessions)[-1]]
            before = engine_of(rt).committed["stripe"]
            body = completed(session, "pi_moves")
            paid = await deliver(client, body, signature(body))
            assert (paid.status_code, paid.json()["outcome"]) == (200, "granted")
            twice = await deliver(client, body, signature(body))
            assert twice.json()["outcome"] == "duplicate"
            back = refunded("pi_moves", 500, 250)
            taken = await deliver(client, back, signature(back))
            assert taken.json()["outcome"] == "refunded"
            assert engine_of(rt).committed["stripe"] - before == 3
            assert await account(rt, shop.buyer.id) == (500, 0, 500)
            await assert_reconciled(rt)
            assert await audit_valid(rt)
    finally:
        await rt.close()
        await fake_stripe.stop()


# ------------------------------------------------------------------ one batch, bad moves of every kind


async def _grant_then_refuse(tx: Tx, user_id: uuid.UUID) -> dict[str, Any]:
    """A Work move that moves money, writes a row and an audit entry, then is refused."""
    await credits.grant(tx, user_id, 1_000, reason="promo")
    tx.session.add(
        PromoCode(code=f"GHOST-{uuid.uuid4().hex[:8]}", credits=1, per_user_limit=1, active=True, redeemed_count=0)
    )
    await tx.session.flush()
    audit.record(tx, "promo.ghost", "promo_code", user_id)
    raise promos.PromoExhausted


async def _crash(tx: Tx, user_id: uuid.UUID) -> dict[str, Any]:
    """A Work move that fails unexpectedly (a reason longer than its column)."""
    await credits.deduct(tx, user_id, 1, reason="x" * 40)
    return {}


async def test_a_bad_move_of_each_kind_leaves_its_batch_neighbours_alone(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    user = await funded(rt, 100)
    uid = uuid.UUID(user.id)
    engine = engine_of(rt)
    [active, spent] = await engine.submit_many(
        [Move(uid, 0, "usage", _render, act=Hold(20, 600)), Move(uid, 0, "usage", _render, act=Hold(5, 600))]
    )
    assert active.view is not None and spent.view is not None
    assert (await engine.submit(Move(None, 0, "usage", _render, act=Release(_made_id(spent))))).error is None
    debit = await engine.submit(Move(uid, -10, "usage", _render))
    assert debit.view is not None
    promo_codes, audits = await _count(rt, PromoCode), await _count(rt, AuditLog)
    moves = [
        Move(uid, -1, "usage", _render),  # good
        Move(None, 0, "hold_capture", _render, act=Capture(uuid.uuid4())),  # no such hold
        Move(None, 0, "hold_capture", _render, act=Capture(_made_id(active), 21)),  # beyond the hold
        Move(None, 0, "hold_release", _render, act=Release(_made_id(spent))),  # already released
        Move(uid, 0, "usage", _render, act=Hold(1_000, 600)),  # more than available
        Move(None, 0, "refund", _render, act=Refund(_made_id(debit), 11)),  # more than the debit
        Move(None, 0, "refund", _render, act=Refund(uuid.uuid4())),  # no such debit
        Move(uid, 0, "promo", _render, act=Work("promo", lambda tx: promos.redeem(tx, uid, "NO-SUCH-CODE"))),
        Move(uid, 0, "promo", _render, act=Work("promo", lambda tx: _grant_then_refuse(tx, uid))),
        Move(
            uid,
            0,
            "sora",
            _render,
            act=Work("sora", lambda tx: sora.fail(tx, cast(Any, _Who(uid)), uuid.uuid4(), None)),
        ),
        Move(uid, 0, "a", _render, act=Work("authorization", lambda tx: _cancel_unknown(tx, uid))),
        Move(None, 0, "hold_capture", _render, act=Capture(_made_id(active), 15)),  # good
        Move(None, 0, "refund", _render, act=Refund(_made_id(debit), 4)),  # good
        Move(uid, 0, "usage", _render, act=Hold(3, 600)),  # good
        Move(uid, 2, "promo", _render),  # good
    ]
    outcomes = await engine.submit_many(moves)
    codes = [o.error.code if o.error is not None else o.status_code for o in outcomes]
    assert codes == [
        201,
        "HOLD_NOT_FOUND",
        "CAPTURE_EXCEEDS_HOLD",
        "HOLD_NOT_ACTIVE",
        "INSUFFICIENT_CREDITS",
        "REFUND_EXCEEDS_DEBIT",
        "TRANSACTION_NOT_FOUND",
        "PROMO_NOT_FOUND",
        "PROMO_EXHAUSTED",
        "GENERATION_NOT_FOUND",
        "AUTHORIZATION_NOT_FOUND",
        201,
        201,
        201,
        201,
    ]
    # 100 - 10 - 1 - 15 + 4 + 2; only the new hold of 3 is still reserved
    assert await account(rt, user.id) == (80, 3, 80)
    assert await _count(rt, PromoCode) == promo_codes  # the refused Work's row was rolled back
    assert await _count(rt, CreditTransaction, CreditTransaction.amount == 1_000) == 0
    assert await _count(rt, AuditLog) == audits + 6  # debit, capture (2), refund, hold, grant
    crashed = await asyncio.gather(
        engine.submit(Move(uid, -1, "usage", _render)),
        engine.submit(Move(uid, 0, "crash", _render, act=Work("crash", lambda tx: _crash(tx, uid)))),
        engine.submit(Move(uid, -1, "usage", _render)),
        return_exceptions=True,
    )
    assert isinstance(crashed[1], BaseException)
    assert [o.status_code for o in crashed if isinstance(o, Outcome)] == [201, 201]
    assert await account(rt, user.id) == (78, 3, 78)
    await assert_reconciled(rt)
    assert await audit_valid(rt)


class _Who:
    """The user as the Sora service reads it (its id)."""

    def __init__(self, user_id: uuid.UUID) -> None:
        self.id = user_id


async def _cancel_unknown(tx: Tx, user_id: uuid.UUID) -> AuthorizationOut:
    """Cancel an authorization that does not exist (refused before the caller is looked at)."""
    caller: Any = _Who(user_id)
    return await authorizations.cancel(tx, caller, uuid.uuid4())


# ------------------------------------------------------------------ the mixed race, through HTTP


async def _send(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_mixed_moves_on_a_few_hot_accounts_never_overdraw(live_core: LiveServer) -> None:
    """Hundreds of concurrent holds, captures, releases, refunds and deductions on three
    accounts through the real HTTP stack: no overdraft, reserved never above the balance,
    balance == sum of the ledger, reconcile clean, the audit chain verifies."""
    rt = live_core.runtime
    users = [(await funded(rt, 2_000)).id for _ in range(3)]
    headers = money(rt)
    rng = random.Random(17)
    base = f"{live_core.url}/api/credits"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=60)) as http:
        holds = await asyncio.gather(
            *(
                _send(http, f"{base}/holds", {"userId": rng.choice(users), "amount": rng.randint(1, 40)}, headers)
                for _ in range(120)
            )
        )
        debits = await asyncio.gather(
            *(
                _send(http, f"{base}/deduct", {"userId": rng.choice(users), "amount": rng.randint(1, 30)}, headers)
                for _ in range(60)
            )
        )
        held_ids = [body["id"] for status, body in holds if status == 201]
        debit_ids = [body["id"] for status, body in debits if status == 201]
        assert held_ids and debit_ids
        ops: list[tuple[str, dict[str, Any] | None]] = []
        for hold_id in held_ids:
            ops.append((f"{base}/holds/{hold_id}/capture", {"amount": rng.randint(1, 45)}))
            ops.append((f"{base}/holds/{hold_id}/release", None))  # one of the two wins, or neither
        for debit_id in debit_ids:
            ops.extend((f"{base}/refund", {"transactionId": debit_id, "amount": rng.randint(1, 20)}) for _ in range(2))
        ops.extend((f"{base}/deduct", {"userId": rng.choice(users), "amount": rng.randint(1, 120)}) for _ in range(80))
        ops.extend((f"{base}/holds", {"userId": rng.choice(users), "amount": rng.randint(1, 120)}) for _ in range(40))
        rng.shuffle(ops)
        results = await asyncio.gather(*(_send(http, url, body, headers) for url, body in ops))
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 201, 402, 409, 422}, statuses
    assert statuses[402] > 0 and statuses[409] > 0  # the guards were exercised
    resolved: Counter[str] = Counter()
    for (url, _), (status, _) in zip(ops, results, strict=True):
        if "/holds/" in url and status in (200, 201):
            resolved[url.rsplit("/", 2)[1]] += 1
    assert max(resolved.values()) == 1  # a hold resolves once
    for user_id in users:
        balance, reserved, total = await account(rt, user_id)
        assert balance == total and 0 <= reserved <= balance
    await assert_reconciled(rt)
    assert await audit_valid(rt)


async def test_authorizations_and_usage_events_of_one_user_never_deadlock(
    pg_runtime: Runtime, pg_client: httpx.AsyncClient
) -> None:
    """Both writers lock the user's account before the user's usage counters (the engine's
    batch, then the Work move counting the call; the usage writer likewise), so a race of
    authorizations, settles and usage events on one user never fails a batch whole."""
    from tests.core.test_usage import event, reporter

    rt, client = pg_runtime, pg_client
    user = await funded(rt, 1_000_000, roles=["user"])
    moves, events = engine_of(rt), ledger.usage_engine_of(rt)
    assert events is not None
    worst = {"provider": "openai", "model": "gpt-4o", "maxInputTokens": 1000, "maxOutputTokens": 1000}

    async def authorize_and_settle(i: int) -> int:
        made = await client.post("/api/usage/authorizations", json=worst, headers=user.headers)
        assert made.status_code == 201, made.text
        settled = await client.post(
            f"/api/usage/authorizations/{made.json()['id']}/settle",
            json={"requestId": f"race-a-{i}", "inputTokens": 10, "outputTokens": 10},
            headers=user.headers,
        )
        return settled.status_code

    async def report(i: int) -> int:
        answer = await client.post("/api/usage/events", headers=reporter(rt), json=event(user, f"race-e-{i}"))
        return answer.status_code

    answers = await asyncio.gather(*(authorize_and_settle(i) for i in range(60)), *(report(i) for i in range(60)))
    assert set(answers) == {201}
    assert (moves.retried_batches, events.retried_batches) == (0, 0)
    balance, reserved, total = await account(rt, user.id)
    assert reserved == 0 and balance == total
    await assert_reconciled(rt)
    assert await audit_valid(rt)
