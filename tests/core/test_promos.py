"""Promo codes through the HTTP stack (both backends); redemption races on PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from aihub.config import Settings
from aihub.core.promos import service as promos
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog, CreditAccount, CreditTransaction, PromoRedemption, User
from tests.conftest import Caller, LiveServer, _core_app, create_user
from tests.core.test_users import assert_error

BASE = "/api/promo-codes"
GENERATED = re.compile(r"^[2-9A-HJKMNP-Z]{4}(-[2-9A-HJKMNP-Z]{4}){3}$")


async def count(rt: Runtime, model: type, *where: ColumnElement[bool]) -> int:
    tx = rt.tx()
    try:
        return int((await tx.session.execute(select(func.count()).select_from(model).where(*where))).scalar_one())
    finally:
        await tx.close()


def iso(delta: dt.timedelta) -> str:
    return (dt.datetime.now(dt.UTC) + delta).isoformat()


async def make(client: httpx.AsyncClient, admin: Caller, **body: object) -> dict[str, object]:
    body.setdefault("credits", 50)
    response = await client.post(BASE, headers=admin.headers, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def redeem(client: httpx.AsyncClient, caller: Caller, code: str, **headers: str) -> httpx.Response:
    return await client.post(f"{BASE}/redeem", headers={**caller.headers, **headers}, json={"code": code})


async def bulk_users(rt: Runtime, n: int) -> list[Caller]:
    """Many plain users (no roles, empty credit accounts) in one transaction: ``create_user`` per
    user would spend most of a race test's time on setup."""
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.uuid4() for _ in range(n)]
    tx = rt.tx()
    try:
        tx.session.add_all(
            [
                User(
                    id=i,
                    email=f"bulk-{i.hex}@example.com",
                    verified=True,
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
                for i in ids
            ]
        )
        await tx.session.flush()
        tx.session.add_all(
            [CreditAccount(user_id=i, balance=0, reserved=0, created_at=now, updated_at=now) for i in ids]
        )
        await tx.commit()
    finally:
        await tx.close()
    return [
        Caller(
            id=str(i),
            email=f"bulk-{i.hex}@example.com",
            token=rt.codec.issue(sub=str(i), role="user", roles=[], email=f"bulk-{i.hex}@example.com"),
            roles=[],
        )
        for i in ids
    ]


# ------------------------------------------------------------------------------ creation


def test_generated_codes_are_unambiguous_and_random() -> None:
    codes = {promos.generate_code() for _ in range(2_000)}
    assert len(codes) == 2_000
    assert all(GENERATED.match(c) for c in codes)
    assert not set("".join(codes)) & set("01OIL")
    assert promos.generate_code("spring").startswith("SPRING-")


async def test_create_given_and_generated(client: httpx.AsyncClient, admin: Caller) -> None:
    given = await make(client, admin, code="Welcome-2026", credits=100, maxRedemptions=5, description="launch")
    assert given["code"] == "WELCOME-2026"
    assert (given["credits"], given["maxRedemptions"], given["perUserLimit"]) == (100, 5, 1)
    assert (given["redeemedCount"], given["creditsGranted"], given["active"]) == (0, 0, True)
    assert given["createdBy"] == admin.id
    generated = await make(client, admin)
    assert GENERATED.match(str(generated["code"]))
    assert generated["maxRedemptions"] is None
    taken = await client.post(BASE, headers=admin.headers, json={"code": "welcome-2026", "credits": 1})
    assert_error(taken, 409, "PROMO_CODE_TAKEN")
    read = await client.get(f"{BASE}/{given['id']}", headers=admin.headers)
    assert read.json() == given
    assert_error(await client.get(f"{BASE}/{uuid.uuid4()}", headers=admin.headers), 404, "PROMO_NOT_FOUND")


async def test_batch_of_1000_unique_codes(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    body = {"count": 1000, "prefix": "bf", "credits": 10, "expiresAt": iso(dt.timedelta(days=30))}
    response = await client.post(f"{BASE}/batch", headers=admin.headers, json=body)
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert len(items) == 1000
    assert len({i["code"] for i in items}) == 1000
    assert all(i["code"].startswith("BF-") and GENERATED.match(i["code"][3:]) for i in items)
    assert all(i["credits"] == 10 for i in items)
    assert await count(runtime, AuditLog, AuditLog.action == "promo.create") == 1000


async def test_validation_errors(client: httpx.AsyncClient, admin: Caller) -> None:
    bad = [
        (BASE, {"credits": 0}),
        (BASE, {"credits": -5}),
        (BASE, {"credits": 10, "surprise": True}),
        (BASE, {"credits": 10, "code": "a b"}),
        (BASE, {"credits": 10, "startsAt": iso(dt.timedelta(days=2)), "expiresAt": iso(dt.timedelta(days=1))}),
        (BASE, {"credits": 10, "perUserLimit": 0}),
        (f"{BASE}/batch", {"count": 1001, "credits": 10}),
        (f"{BASE}/batch", {"count": 0, "credits": 10}),
        (f"{BASE}/batch", {"count": 5, "credits": 0}),
    ]
    for path, body in bad:
        body_out = assert_error(await client.post(path, headers=admin.headers, json=body), 422, "VALIDATION_ERROR")
        assert body_out["details"], body


async def test_permissions(client: httpx.AsyncClient, admin: Caller, manager: Caller, user: Caller) -> None:
    promo = await make(client, admin)
    assert_error(await client.post(BASE, json={"credits": 5}), 401, "UNAUTHORIZED")
    assert_error(await client.post(f"{BASE}/redeem", json={"code": "X"}), 401, "UNAUTHORIZED")
    assert_error(await client.post(BASE, headers=user.headers, json={"credits": 5}), 403, "FORBIDDEN")
    assert_error(await client.get(BASE, headers=user.headers), 403, "FORBIDDEN")
    assert_error(await client.get(f"{BASE}/{promo['id']}", headers=user.headers), 403, "FORBIDDEN")
    patch = await client.patch(f"{BASE}/{promo['id']}", headers=user.headers, json={"active": False})
    assert_error(patch, 403, "FORBIDDEN")
    # A manager reads (promo:read) but cannot write.
    assert (await client.get(BASE, headers=manager.headers)).status_code == 200
    assert_error(await client.post(BASE, headers=manager.headers, json={"credits": 5}), 403, "FORBIDDEN")


# ------------------------------------------------------------------------------ redemption


async def test_redeem_grants_credits_case_and_space_insensitive(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    promo = await make(client, admin, code="SPRING-25", credits=25, perUserLimit=2)
    first = await redeem(client, user, "  spring-25 \n")
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["code"], body["credits"], body["balance"]) == ("SPRING-25", 25, 25)
    second = await redeem(client, user, "Spring-25")
    assert second.json()["balance"] == 50
    assert_error(await redeem(client, user, "SPRING-25"), 409, "PROMO_ALREADY_REDEEMED")
    history = (await client.get("/api/credits/transactions", headers=user.headers)).json()["items"]
    assert [(t["reason"], t["amount"]) for t in history] == [("promo", 25), ("promo", 25)]
    assert body["transactionId"] in {t["id"] for t in history}
    read = (await client.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()
    assert (read["redeemedCount"], read["creditsGranted"]) == (2, 50)
    page = (await client.get(f"{BASE}/{promo['id']}/redemptions?limit=1", headers=admin.headers)).json()
    assert page["items"][0]["userId"] == user.id and page["items"][0]["email"] == user.email
    assert page["nextCursor"]
    rest = await client.get(f"{BASE}/{promo['id']}/redemptions?cursor={page['nextCursor']}", headers=admin.headers)
    assert len(rest.json()["items"]) == 1 and rest.json()["nextCursor"] is None
    assert await count(runtime, AuditLog, AuditLog.action == "promo.redeem") == 2


async def test_redeem_refusals(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    user = await create_user(runtime)
    later = await make(client, admin, startsAt=iso(dt.timedelta(hours=1)))
    gone = await make(client, admin, startsAt=iso(dt.timedelta(days=-2)), expiresAt=iso(dt.timedelta(days=-1)))
    off = await make(client, admin)
    await client.patch(f"{BASE}/{off['id']}", headers=admin.headers, json={"active": False})
    one = await make(client, admin, maxRedemptions=1)
    assert (await redeem(client, await create_user(runtime), str(one["code"]))).status_code == 200

    assert_error(await redeem(client, user, str(later["code"])), 409, "PROMO_NOT_STARTED")
    assert_error(await redeem(client, user, str(gone["code"])), 410, "PROMO_EXPIRED")
    assert_error(await redeem(client, user, str(off["code"])), 409, "PROMO_INACTIVE")
    assert_error(await redeem(client, user, str(one["code"])), 409, "PROMO_EXHAUSTED")
    assert_error(await redeem(client, user, "NOPE-NOPE"), 404, "PROMO_NOT_FOUND")
    assert_error(
        await client.post(f"{BASE}/redeem", headers=user.headers, json={"code": "X", "x": 1}), 422, "VALIDATION_ERROR"
    )
    # Refusals leave nothing behind: no grant, no redemption, counters untouched.
    assert await count(runtime, CreditTransaction, CreditTransaction.user_id == uuid.UUID(user.id)) == 0
    assert await count(runtime, PromoRedemption) == 1
    for promo in (later, gone, off):
        assert (await client.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()["redeemedCount"] == 0
    # Reactivated, the code works again.
    await client.patch(f"{BASE}/{off['id']}", headers=admin.headers, json={"active": True})
    assert (await redeem(client, user, str(off["code"]))).status_code == 200


async def test_patch_rules(client: httpx.AsyncClient, runtime: Runtime, admin: Caller) -> None:
    promo = await make(client, admin, maxRedemptions=5)
    for _ in range(2):
        assert (await redeem(client, await create_user(runtime), str(promo["code"]))).status_code == 200
    url = f"{BASE}/{promo['id']}"
    assert_error(
        await client.patch(url, headers=admin.headers, json={"maxRedemptions": 1}), 409, "PROMO_MAX_BELOW_REDEEMED"
    )
    changed = await client.patch(url, headers=admin.headers, json={"maxRedemptions": 2, "description": "closed"})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["maxRedemptions"], changed.json()["description"]) == (2, "closed")
    assert_error(await redeem(client, await create_user(runtime), str(promo["code"])), 409, "PROMO_EXHAUSTED")
    unlimited = await client.patch(url, headers=admin.headers, json={"maxRedemptions": None})
    assert unlimited.json()["maxRedemptions"] is None
    past = await client.patch(url, headers=admin.headers, json={"expiresAt": iso(dt.timedelta(seconds=-1))})
    assert past.status_code == 200
    assert_error(await redeem(client, await create_user(runtime), str(promo["code"])), 410, "PROMO_EXPIRED")
    window = {"startsAt": iso(dt.timedelta(days=3)), "expiresAt": iso(dt.timedelta(days=2))}
    assert_error(await client.patch(url, headers=admin.headers, json=window), 422, "VALIDATION_ERROR")
    assert_error(await client.patch(url, headers=admin.headers, json={"credits": 9}), 422, "VALIDATION_ERROR")
    assert_error(await client.patch(url, headers=admin.headers, json={"active": None}), 422, "VALIDATION_ERROR")
    naive = {"startsAt": "2020-01-01T00:00:00"}  # no zone: read as UTC, compared with the stored expiry
    assert (
        (await client.patch(url, headers=admin.headers, json=naive))
        .json()["startsAt"]
        .startswith("2020-01-01T00:00:00")
    )
    assert_error(
        await client.patch(f"{BASE}/{uuid.uuid4()}", headers=admin.headers, json={"active": False}),
        404,
        "PROMO_NOT_FOUND",
    )
    assert await count(runtime, AuditLog, AuditLog.action == "promo.update") == 4


async def test_list_filters_and_pagination(client: httpx.AsyncClient, admin: Caller) -> None:
    made = [await make(client, admin, code=f"LIST-{n}") for n in range(3)]
    await client.patch(f"{BASE}/{made[0]['id']}", headers=admin.headers, json={"active": False})
    page = (await client.get(f"{BASE}?limit=2", headers=admin.headers)).json()
    assert [p["code"] for p in page["items"]] == ["LIST-2", "LIST-1"]
    rest = (await client.get(f"{BASE}?limit=2&cursor={page['nextCursor']}", headers=admin.headers)).json()
    assert [p["code"] for p in rest["items"]] == ["LIST-0"] and rest["nextCursor"] is None
    inactive = (await client.get(f"{BASE}?active=false", headers=admin.headers)).json()["items"]
    assert [p["code"] for p in inactive] == ["LIST-0"]
    found = (await client.get(f"{BASE}?code=list-1", headers=admin.headers)).json()["items"]
    assert [p["code"] for p in found] == ["LIST-1"]


async def test_idempotent_redeem(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    promo = await make(client, admin, perUserLimit=5)
    first = await redeem(client, user, str(promo["code"]), **{"Idempotency-Key": "r-1"})
    again = await redeem(client, user, str(promo["code"]), **{"Idempotency-Key": "r-1"})
    assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
    assert (await client.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()["redeemedCount"] == 1


async def test_failed_attempts_are_limited_per_user_not_per_neighbour(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    promo = await make(client, admin, perUserLimit=1)
    guesser = await create_user(runtime)
    for n in range(runtime.settings.promo_max_failures_per_user):
        assert_error(await redeem(client, guesser, f"GUESS-{n}"), 404, "PROMO_NOT_FOUND")
    limited = assert_error(await redeem(client, guesser, str(promo["code"])), 429, "PROMO_RATE_LIMITED")
    assert limited["details"]["retryAfterSeconds"] > 0  # type: ignore[index]
    # Another user behind the same address (a NAT, an office) still redeems.
    neighbour = await create_user(runtime)
    assert (await redeem(client, neighbour, str(promo["code"]))).status_code == 200
    # Every refusal counts towards the user's own limit, not only unknown codes.
    for _ in range(runtime.settings.promo_max_failures_per_user):
        assert_error(await redeem(client, neighbour, str(promo["code"])), 409, "PROMO_ALREADY_REDEEMED")
    assert_error(await redeem(client, neighbour, str(promo["code"])), 429, "PROMO_RATE_LIMITED")
    assert (await client.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()["redeemedCount"] == 1


async def test_the_address_limit_is_high_enough_for_a_nat_by_default(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller
) -> None:
    assert runtime.settings.promo_max_failures_per_ip >= 100
    promo = await make(client, admin)
    # Ten colleagues behind one address each mistype nine codes: 90 guesses from the address.
    for i in range(10):
        colleague = await create_user(runtime)
        for n in range(runtime.settings.promo_max_failures_per_user - 1):
            assert_error(await redeem(client, colleague, f"TYPO-{i}-{n}"), 404, "PROMO_NOT_FOUND")
    assert (await redeem(client, await create_user(runtime), str(promo["code"]))).status_code == 200


@pytest.fixture
async def tight_address(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """Core with a per-address threshold of 3 (separately configurable from the user limit)."""
    rt = Runtime.build(settings.model_copy(update={"promo_max_failures_per_ip": 3}))
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as c:
        yield c, rt
    await rt.close()


async def test_only_unknown_codes_count_against_the_address(tight_address: tuple[httpx.AsyncClient, Runtime]) -> None:
    client, rt = tight_address
    admin = await create_user(rt, roles=["admin"])
    sold_out = await make(client, admin, maxRedemptions=1)
    assert (await redeem(client, await create_user(rt), str(sold_out["code"]))).status_code == 200
    expired = await make(client, admin)
    patched = await client.patch(
        f"{BASE}/{expired['id']}", headers=admin.headers, json={"expiresAt": iso(-dt.timedelta(minutes=1))}
    )
    assert patched.status_code == 200, patched.text
    inactive = await make(client, admin)
    await client.patch(f"{BASE}/{inactive['id']}", headers=admin.headers, json={"active": False})
    # Many refusals of codes that exist, from many users: none is a guess.
    for _ in range(3):
        assert_error(await redeem(client, await create_user(rt), str(sold_out["code"])), 409, "PROMO_EXHAUSTED")
        assert_error(await redeem(client, await create_user(rt), str(expired["code"])), 410, "PROMO_EXPIRED")
        assert_error(await redeem(client, await create_user(rt), str(inactive["code"])), 409, "PROMO_INACTIVE")
    good = await make(client, admin, maxRedemptions=10)
    assert (await redeem(client, await create_user(rt), str(good["code"]))).status_code == 200
    # Three guesses of codes that do not exist, by three users, lock the address for everyone.
    for n in range(3):
        assert_error(await redeem(client, await create_user(rt), f"NOPE-{n}"), 404, "PROMO_NOT_FOUND")
    locked = await redeem(client, await create_user(rt), str(good["code"]))
    assert_error(locked, 429, "PROMO_RATE_LIMITED")
    assert 0 < int(locked.headers["retry-after"]) <= rt.settings.promo_failure_window_seconds
    assert (await client.get(f"{BASE}/{good['id']}", headers=admin.headers)).json()["redeemedCount"] == 1


# ------------------------------------------------------------------------------ races (PostgreSQL)


async def test_500_users_race_for_100_redemptions(live_core: LiveServer) -> None:
    rt = live_core.runtime
    admin = await create_user(rt, roles=["admin"])
    users = await bulk_users(rt, 500)
    limits = httpx.Limits(max_connections=16)  # fewer waiters on the one row lock: less contention
    async with httpx.AsyncClient(base_url=live_core.url, timeout=300, limits=limits) as c:
        promo = await make(c, admin, credits=7, maxRedemptions=100)
        results = await asyncio.gather(*(redeem(c, u, str(promo["code"])) for u in users))
        read = (await c.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()
    statuses = [r.status_code for r in results]
    assert statuses.count(200) == 100, sorted(set(statuses))
    # Losers hear PROMO_EXHAUSTED; 400 of them from one address lock nothing (no guesses).
    assert {r.json()["code"] for r in results if r.status_code != 200} == {"PROMO_EXHAUSTED"}
    assert (read["redeemedCount"], read["creditsGranted"]) == (100, 700)
    assert await count(rt, CreditTransaction, CreditTransaction.reason == "promo") == 100
    assert await count(rt, PromoRedemption) == 100


async def _race_one_user(live: LiveServer, per_user_limit: int, attempts: int) -> None:
    rt = live.runtime
    admin = await create_user(rt, roles=["admin"])
    user = await create_user(rt)
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
        promo = await make(c, admin, credits=3, perUserLimit=per_user_limit)
        results = await asyncio.gather(*(redeem(c, user, str(promo["code"])) for _ in range(attempts)))
        read = (await c.get(f"{BASE}/{promo['id']}", headers=admin.headers)).json()
        balance = (await c.get("/api/credits/balance", headers=user.headers)).json()["balance"]
    statuses = [r.status_code for r in results]
    assert statuses.count(200) == per_user_limit, statuses
    assert {r.json()["code"] for r in results if r.status_code != 200} <= {
        "PROMO_ALREADY_REDEEMED",
        "PROMO_RATE_LIMITED",
    }
    assert read["redeemedCount"] == per_user_limit and balance == 3 * per_user_limit
    assert await count(rt, CreditTransaction, CreditTransaction.reason == "promo") == per_user_limit


async def test_one_user_50_concurrent_attempts_once(live_core: LiveServer) -> None:
    await _race_one_user(live_core, per_user_limit=1, attempts=50)


async def test_one_user_concurrent_attempts_per_user_limit_3(live_core: LiveServer) -> None:
    await _race_one_user(live_core, per_user_limit=3, attempts=10)


async def test_parallel_wrong_codes_from_one_user_get_exactly_the_limit(live_core: LiveServer) -> None:
    """Check-and-count is one step: 30 simultaneous guesses get `limit` evaluations, 429 for the rest."""
    rt = live_core.runtime
    limit = rt.settings.promo_max_failures_per_user
    admin = await create_user(rt, roles=["admin"])
    guesser, neighbour = await create_user(rt), await create_user(rt)
    async with httpx.AsyncClient(base_url=live_core.url, timeout=120) as c:
        promo = await make(c, admin)
        results = await asyncio.gather(*(redeem(c, guesser, f"WRONG-{n}") for n in range(30)))
        after = await redeem(c, guesser, str(promo["code"]))
        other = await redeem(c, neighbour, str(promo["code"]))
    codes = Counter(r.json()["code"] for r in results)
    assert codes == {"PROMO_NOT_FOUND": limit, "PROMO_RATE_LIMITED": 30 - limit}, codes
    assert after.status_code == 429
    assert other.status_code == 200, other.text  # same loopback address, another user
