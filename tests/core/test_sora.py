"""The Sora2 video tool's flow: sessions, credit check, hold-then-capture, failures, races."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx
from sqlalchemy import func, select, update

from aihub.kit.runtime import Runtime
from aihub.models import CreditHold, CreditTransaction, SoraGeneration, UsageEvent
from tests.conftest import Caller, LiveServer, create_user
from tests.core.test_usage import fund
from tests.core.test_users import assert_error


async def open_session(client: httpx.AsyncClient, user: Caller) -> dict[str, str]:
    created = await client.post("/api/sora/sessions", headers=user.headers)
    assert created.status_code == 201, created.text
    token = created.json()["sessionToken"]
    assert token.startswith("VERIFIED-") and len(token) >= 9 + 32
    return {"X-Session-Token": token}


async def run_out(rt: Runtime, gen: dict[str, str]) -> None:
    """Move a generation and its hold past their expiry (the clock cannot be waited out here)."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    tx = rt.tx()
    try:
        await tx.session.execute(
            update(SoraGeneration).where(SoraGeneration.id == uuid.UUID(gen["id"])).values(expires_at=past)
        )
        await tx.session.execute(
            update(CreditHold).where(CreditHold.id == uuid.UUID(gen["holdId"])).values(expires_at=past)
        )
        await tx.commit()
    finally:
        await tx.close()


async def balance(client: httpx.AsyncClient, user: Caller) -> dict[str, int]:
    return dict((await client.get("/api/credits/balance", headers=user.headers)).json())


async def test_whole_flow_charges_exactly_what_was_made(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 2_000)
    s = await open_session(client, user)
    info = (await client.get("/api/sora/session", headers=s)).json()
    assert info["user"] == {"id": user.id, "email": user.email} and info["balance"] == 2_000
    check = (await client.post("/api/sora/credits/check", headers=s, json={"durationSeconds": 10})).json()
    assert check == {"sufficient": True, "cost": 1_000, "balance": 2_000, "available": 2_000}
    hd = (
        await client.post("/api/sora/credits/check", headers=s, json={"durationSeconds": 10, "resolution": "1080p"})
    ).json()
    assert hd["cost"] == 2_000
    started = await client.post(
        "/api/sora/generations",
        headers={**s, "Idempotency-Key": "gen-1"},
        json={"durationSeconds": 10, "prompt": "a cat"},
    )
    assert started.status_code == 201, started.text
    gen = started.json()
    assert gen["status"] == "pending" and gen["cost"] == 1_000 and gen["holdId"]
    assert await balance(client, user) == {"userId": user.id, "balance": 2_000, "reserved": 1_000, "available": 1_000}
    done = await client.post(f"/api/sora/generations/{gen['id']}/complete", headers=s, json={"actualSeconds": 8})
    assert done.status_code == 200, done.text
    assert done.json() == {"id": gen["id"], "status": "completed", "charged": 800, "balance": 1_200}
    assert await balance(client, user) == {"userId": user.id, "balance": 1_200, "reserved": 0, "available": 1_200}
    ledger = (await client.get("/api/credits/transactions", headers=user.headers)).json()["items"]
    assert [(t["amount"], t["reason"]) for t in ledger] == [(-800, "hold_capture"), (2_000, "purchase")]
    usage = (await client.get("/api/usage", headers=user.headers)).json()["items"]
    assert [(u["provider"], u["model"], u["credits"], u["durationSeconds"]) for u in usage] == [
        ("openai", "sora2", 800, 8)
    ]
    again = await client.post(f"/api/sora/generations/{gen['id']}/fail", headers=s)
    assert_error(again, 409, "GENERATION_NOT_PENDING")


async def test_failed_generation_costs_nothing(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 500)
    s = await open_session(client, user)
    gen = (await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 5})).json()
    failed = await client.post(f"/api/sora/generations/{gen['id']}/fail", headers=s, json={"reason": "content policy"})
    assert failed.json() == {"id": gen["id"], "status": "failed", "charged": 0, "balance": 500}
    assert await balance(client, user) == {"userId": user.id, "balance": 500, "reserved": 0, "available": 500}
    assert_error(
        await client.post(f"/api/sora/generations/{gen['id']}/complete", headers=s), 409, "GENERATION_NOT_PENDING"
    )


async def test_insufficient_credits_hold_nothing(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 100)
    s = await open_session(client, user)
    check = (await client.post("/api/sora/credits/check", headers=s, json={"durationSeconds": 2})).json()
    assert check["sufficient"] is False and check["cost"] == 200
    short = await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 2})
    assert_error(short, 402, "INSUFFICIENT_CREDITS")
    assert await balance(client, user) == {"userId": user.id, "balance": 100, "reserved": 0, "available": 100}


async def test_idempotent_start_holds_once(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    await fund(runtime, user.id, 1_000)
    s = {**(await open_session(client, user)), "Idempotency-Key": "same-key"}
    first = await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 3})
    second = await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 3})
    assert first.json() == second.json()
    assert (await balance(client, user))["reserved"] == 300
    other = await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 4})
    assert_error(other, 422, "IDEMPOTENCY_KEY_REUSED")


async def test_sessions_revocation_and_suspension(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 1_000)
    s = await open_session(client, user)
    listed = (await client.get("/api/sora/sessions", headers=user.headers)).json()["items"]
    assert len(listed) == 1 and "sessionToken" not in listed[0] and "tokenHash" not in listed[0]
    other = await create_user(runtime)
    assert_error(
        await client.delete(f"/api/sora/sessions/{listed[0]['id']}", headers=other.headers), 404, "SESSION_NOT_FOUND"
    )
    gen = (await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 1})).json()
    assert (await client.delete(f"/api/sora/sessions/{listed[0]['id']}", headers=user.headers)).status_code == 204
    assert_error(await client.post(f"/api/sora/generations/{gen['id']}/complete", headers=s), 401, "INVALID_SESSION")
    # A new session works, until the user is suspended.
    s2 = await open_session(client, user)
    assert (await client.get("/api/sora/session", headers=s2)).status_code == 200
    await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"status": "suspended"})
    assert_error(await client.get("/api/sora/session", headers=s2), 401, "INVALID_SESSION")
    await client.patch(f"/api/users/{user.id}", headers=admin.headers, json={"status": "active"})
    assert_error(await client.get("/api/sora/session", headers=s2), 401, "INVALID_SESSION")  # revoked, not paused
    for bad in ({}, {"X-Session-Token": "nope"}, {"X-Session-Token": "VERIFIED-" + "x" * 40}):
        assert_error(await client.get("/api/sora/session", headers=bad), 401, "INVALID_SESSION")
    assert_error(await client.post("/api/sora/sessions"), 401, "UNAUTHORIZED")


async def test_generations_belong_to_their_user(client: httpx.AsyncClient, runtime: Runtime, user: Caller) -> None:
    other = await create_user(runtime)
    await fund(runtime, user.id, 1_000)
    mine = await open_session(client, user)
    theirs = await open_session(client, other)
    gen = (await client.post("/api/sora/generations", headers=mine, json={"durationSeconds": 1})).json()
    assert_error(
        await client.post(f"/api/sora/generations/{gen['id']}/fail", headers=theirs), 404, "GENERATION_NOT_FOUND"
    )
    assert_error(
        await client.post(f"/api/sora/generations/{uuid.uuid4()}/complete", headers=mine), 404, "GENERATION_NOT_FOUND"
    )
    for body in ({"durationSeconds": 0}, {"durationSeconds": 601}, {"durationSeconds": 1, "resolution": "4k"}, {}):
        assert_error(await client.post("/api/sora/generations", headers=mine, json=body), 422, "VALIDATION_ERROR")


async def test_expired_generation_is_released_and_refused(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    await fund(runtime, user.id, 1_000)
    s = await open_session(client, user)
    gen = (await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 2})).json()
    await run_out(runtime, gen)
    assert_error(await client.post(f"/api/sora/generations/{gen['id']}/complete", headers=s), 409, "HOLD_NOT_ACTIVE")
    assert (await client.get(f"/api/sora/generations/{gen['id']}", headers=s)).json()["status"] == "expired"
    assert (await balance(client, user))["balance"] == 1_000


async def test_concurrent_complete_and_fail_one_wins(live_core: LiveServer) -> None:
    rt = live_core.runtime
    user = await create_user(rt)
    await fund(rt, user.id, 10_000)
    async with httpx.AsyncClient(base_url=live_core.url, timeout=60) as c:
        s = await open_session(c, user)
        gens = [
            (await c.post("/api/sora/generations", headers=s, json={"durationSeconds": 1})).json() for _ in range(10)
        ]
        calls = []
        for gen in gens:
            calls += [c.post(f"/api/sora/generations/{gen['id']}/complete", headers=s) for _ in range(3)]
            calls += [c.post(f"/api/sora/generations/{gen['id']}/fail", headers=s) for _ in range(3)]
        results = await asyncio.gather(*calls)
        final = (await c.get("/api/credits/balance", headers=user.headers)).json()
    wins = [r for r in results if r.status_code == 200]
    assert len(wins) == 10, [(r.status_code, r.text[:200]) for r in results if r.status_code != 409]
    assert all(r.json()["code"] == "GENERATION_NOT_PENDING" for r in results if r.status_code != 200)
    completed = sum(1 for r in wins if r.json()["status"] == "completed")
    assert final == {
        "userId": user.id,
        "balance": 10_000 - 100 * completed,
        "reserved": 0,
        "available": 10_000 - 100 * completed,
    }
    tx = rt.tx()
    try:
        captures = (
            await tx.session.execute(
                select(func.count()).select_from(CreditTransaction).where(CreditTransaction.reason == "hold_capture")
            )
        ).scalar_one()
        usage_rows = (await tx.session.execute(select(func.count()).select_from(UsageEvent))).scalar_one()
    finally:
        await tx.close()
    assert captures == usage_rows == completed


async def test_sweeps_expire_the_generation_and_release_its_hold(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    from aihub.core.ledger import jobs as ledger_jobs
    from aihub.core.sora.jobs import expire_generations

    await fund(runtime, user.id, 1_000)
    s = await open_session(client, user)
    gen = (await client.post("/api/sora/generations", headers=s, json={"durationSeconds": 3})).json()
    await run_out(runtime, gen)
    await ledger_jobs.sweep_expired_holds(runtime, {})
    await expire_generations(runtime, {})
    assert await balance(client, user) == {"userId": user.id, "balance": 1_000, "reserved": 0, "available": 1_000}
    tx = runtime.tx()
    try:
        status = (
            await tx.session.execute(select(SoraGeneration.status).where(SoraGeneration.id == uuid.UUID(gen["id"])))
        ).scalar_one()
    finally:
        await tx.close()
    assert status == "expired"
