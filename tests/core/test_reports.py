"""Billing reports and analytics agree with the ledger, on generated data."""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
import uuid

import httpx
from sqlalchemy import text, update

from aihub.core.credits import service as credits
from aihub.kit.runtime import Runtime
from aihub.models import CreditTransaction, UsageEvent
from tests.conftest import Caller, create_user
from tests.core.test_usage import event, fund, reporter
from tests.core.test_users import assert_error

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
]
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


async def spread_in_time(rt: Runtime, user_id: str, rng: random.Random) -> None:
    """Move every ledger and usage row of a user to a random time in October (same order kept)."""
    tx = rt.tx()
    try:
        # The ledger refuses UPDATE by trigger: lift it in this test's private database only,
        # to place rows in the past (the ledger itself can only write "now").
        if tx.session.get_bind().dialect.name == "postgresql":
            await tx.session.execute(text("ALTER TABLE credit_transactions DISABLE TRIGGER USER"))
        else:
            await tx.session.execute(text("DROP TRIGGER credit_transactions_no_update"))
        uid = uuid.UUID(user_id)
        rows = (
            await tx.session.execute(
                CreditTransaction.__table__.select()
                .where(CreditTransaction.user_id == uid)
                .order_by(CreditTransaction.seq)
            )
        ).all()
        times = sorted(T0 + dt.timedelta(seconds=rng.randrange(31 * 86400)) for _ in rows)
        for row, when in zip(rows, times, strict=True):
            await tx.session.execute(
                update(CreditTransaction).where(CreditTransaction.seq == row.seq).values(created_at=when)
            )
            meta = row._mapping["metadata"]
            if meta and "usageEventId" in meta:
                await tx.session.execute(
                    update(UsageEvent).where(UsageEvent.id == uuid.UUID(meta["usageEventId"])).values(created_at=when)
                )
        await tx.commit()
    finally:
        await tx.close()


async def generate(client: httpx.AsyncClient, rt: Runtime, user: Caller, rng: random.Random) -> None:
    await fund(rt, user.id, 5_000)
    headers = reporter(rt)
    for _ in range(40):
        provider, model = rng.choice(MODELS)
        body = event(
            user,
            provider=provider,
            model=model,
            inputTokens=rng.randrange(0, 20_000),
            outputTokens=rng.randrange(0, 5_000),
        )
        await client.post("/api/usage/events", headers=headers, json=body)
        if rng.random() < 0.15:
            tx = rt.tx()
            await credits.grant(
                tx, uuid.UUID(user.id), rng.randrange(1, 500), reason=rng.choice(["purchase", "promo", "adjustment"])
            )
            await tx.commit()
            await tx.close()


async def test_report_balances_for_any_period(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    rng = random.Random(7)
    await generate(client, runtime, user, rng)
    await spread_in_time(runtime, user.id, rng)
    balance = (await client.get("/api/credits/balance", headers=user.headers)).json()["balance"]
    whole = (await client.get("/api/billing/report", headers=user.headers)).json()
    assert "openingBalance" in whole, whole
    assert whole["openingBalance"] == 0 and whole["closingBalance"] == balance
    for _ in range(12):
        a, b = sorted(rng.sample(range(0, 35 * 86400), 2))
        params = {
            "from": (T0 + dt.timedelta(seconds=a - 2 * 86400)).isoformat(),
            "to": (T0 + dt.timedelta(seconds=b)).isoformat(),
        }
        report = (await client.get("/api/billing/report", headers=user.headers, params=params)).json()
        assert report["openingBalance"] + report["credits"] - report["debits"] == report["closingBalance"]
        assert report["credits"] == sum(r["credits"] for r in report["byReason"])
        usage_debits = sum(r["debits"] for r in report["byReason"] if r["reason"] == "usage")
        assert usage_debits == sum(u["credits"] for u in report["usage"])
        summary = (
            await client.get("/api/usage/summary", headers=user.headers, params={**params, "groupBy": "model"})
        ).json()
        assert sum(i["credits"] for i in summary["items"]) == usage_debits


async def test_report_csv_parses_back(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await generate(client, runtime, user, random.Random(3))
    report = (await client.get("/api/billing/report", headers=user.headers)).json()
    response = await client.get("/api/billing/report", headers=user.headers, params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="billing-')
    rows = list(csv.reader(io.StringIO(response.text)))
    summary = {r[1]: int(r[2]) for r in rows if r and r[0] == "summary"}
    assert summary == {"opening_balance": report["openingBalance"], "closing_balance": report["closingBalance"]}
    reasons = {r[1]: (int(r[2]), int(r[3])) for r in rows if r and r[0] == "reason"}
    assert reasons == {r["reason"]: (r["credits"], r["debits"]) for r in report["byReason"]}
    usage = {(r[1], r[2]): int(r[6]) for r in rows if r and r[0] == "usage"}
    assert usage == {(u["provider"], u["model"]): u["credits"] for u in report["usage"]}


async def test_report_access_and_validation(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller, manager: Caller
) -> None:
    assert_error(await client.get("/api/billing/report"), 401, "UNAUTHORIZED")
    assert_error(
        await client.get("/api/billing/report", headers=user.headers, params={"userId": manager.id}), 403, "FORBIDDEN"
    )
    assert (
        await client.get("/api/billing/report", headers=manager.headers, params={"userId": user.id})
    ).status_code == 200
    bad = {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}
    assert_error(await client.get("/api/billing/report", headers=user.headers, params=bad), 422, "VALIDATION_ERROR")
    assert_error(
        await client.get("/api/billing/report", headers=user.headers, params={"format": "xml"}), 422, "VALIDATION_ERROR"
    )
    missing = {"userId": str(uuid.uuid4())}
    assert_error(
        await client.get("/api/billing/report", headers=manager.headers, params=missing), 404, "USER_NOT_FOUND"
    )


async def test_overview_matches_the_ledger(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    other = await create_user(runtime)
    rng = random.Random(11)
    await generate(client, runtime, user, rng)
    await generate(client, runtime, other, rng)
    assert_error(await client.get("/api/analytics/overview", headers=user.headers), 403, "FORBIDDEN")
    body = (await client.get("/api/analytics/overview", headers=admin.headers)).json()
    spent = 0
    for caller in (user, other):
        report = (await client.get("/api/billing/report", headers=admin.headers, params={"userId": caller.id})).json()
        spent += sum(r["debits"] for r in report["byReason"] if r["reason"] == "usage")
    assert body["totals"]["credits"] == spent
    assert body["activeUsers"] == 2
    assert sum(p["credits"] for p in body["byProvider"]) == spent
    assert sum(m["requests"] for m in body["byModel"]) == body["totals"]["requests"]
    assert sum(d["credits"] for d in body["daily"]) == spent
    assert {u["userId"] for u in body["topUsers"]} == {user.id, other.id}
    assert body["topUsers"][0]["credits"] >= body["topUsers"][1]["credits"]
