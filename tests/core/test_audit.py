"""Audit log: one row per change in the same transaction, hash chain, tamper detection."""

from __future__ import annotations

import httpx
from sqlalchemy import delete, select, update

from aihub.core.audit import service as audit
from aihub.kit.runtime import Runtime
from aihub.models import AuditChainHead, AuditLog
from tests.conftest import Caller
from tests.core.test_users import assert_error


async def _rows(runtime: Runtime) -> list[AuditLog]:
    tx = runtime.tx()
    try:
        return list((await tx.session.execute(select(AuditLog))).scalars().all())
    finally:
        await tx.close()


async def test_change_writes_one_row_with_request_context(
    client: httpx.AsyncClient, admin: Caller, runtime: Runtime
) -> None:
    before = len(await _rows(runtime))
    response = await client.post(
        "/api/users",
        headers={**admin.headers, "X-Request-Id": "req-audit-1"},
        json={"email": "audited@example.com", "password": "secret-pass-1"},
    )
    assert response.status_code == 201
    rows = [r for r in await _rows(runtime) if r.request_id == "req-audit-1"]
    assert len(await _rows(runtime)) == before + 1
    assert len(rows) == 1
    row = rows[0]
    assert (row.action, row.entity_type, row.entity_id) == ("user.create", "user", response.json()["id"])
    assert (row.actor_id, row.actor_type) == (admin.id, "user")
    assert row.after is not None and row.after["email"] == "audited@example.com"
    assert "password" not in str(row.after) and "argon2" not in str(row.after)

    listed = await client.get(
        "/api/audit-logs",
        headers=admin.headers,
        params={"entityType": "user", "action": "user.create", "actorId": admin.id},
    )
    items = listed.json()["items"]
    assert [i["requestId"] for i in items] == ["req-audit-1"]
    assert set(items[0]) >= {
        "id",
        "actorId",
        "actorType",
        "action",
        "entityType",
        "entityId",
        "before",
        "after",
        "requestId",
        "ip",
        "createdAt",
        "hash",
    }


async def test_failed_request_leaves_no_row(
    client: httpx.AsyncClient, admin: Caller, user: Caller, runtime: Runtime
) -> None:
    before = len(await _rows(runtime))
    # Fails after a write was queued: unknown role is checked before anything; email clash after.
    clash = await client.patch(
        f"/api/users/{user.id}", headers=admin.headers, json={"displayName": "z", "email": admin.email}
    )
    assert_error(clash, 409, "EMAIL_TAKEN")
    assert len(await _rows(runtime)) == before
    unchanged = (await client.get(f"/api/users/{user.id}", headers=admin.headers)).json()
    assert unchanged["displayName"] is None


async def test_verify_detects_edit_and_delete(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    for i in range(6):
        await client.post("/api/users", headers=admin.headers, json={"email": f"chain{i}@example.com"})
    ok = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert ok["valid"] is True and ok["checked"] >= 7

    rows = await _rows(runtime)
    victim = next(r for r in rows if r.after and r.after.get("email") == "chain2@example.com")
    tx = runtime.tx()
    await tx.session.execute(
        update(AuditLog).where(AuditLog.id == victim.id).values(after={**victim.after, "email": "evil@example.com"})
    )
    await tx.commit()
    await tx.close()
    bad = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert bad["valid"] is False
    assert bad["firstBrokenId"] == str(victim.id)

    # Restore the content, then delete a row in the middle of a chain instead.
    tx = runtime.tx()
    await tx.session.execute(update(AuditLog).where(AuditLog.id == victim.id).values(after=victim.after))
    await tx.commit()
    await tx.close()
    assert (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()["valid"] is True
    tx = runtime.tx()
    await tx.session.execute(delete(AuditLog).where(AuditLog.id == victim.id))
    await tx.commit()
    await tx.close()
    gone = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert gone["valid"] is False


async def test_audit_pagination_and_filters(client: httpx.AsyncClient, admin: Caller) -> None:
    for i in range(5):
        await client.post("/api/users", headers=admin.headers, json={"email": f"pg{i}@example.com"})
    first = (await client.get("/api/audit-logs", headers=admin.headers, params={"limit": 2})).json()
    assert len(first["items"]) == 2 and first["nextCursor"]
    second = (
        await client.get("/api/audit-logs", headers=admin.headers, params={"limit": 2, "cursor": first["nextCursor"]})
    ).json()
    assert {i["id"] for i in first["items"]}.isdisjoint({i["id"] for i in second["items"]})
    future = (
        await client.get("/api/audit-logs", headers=admin.headers, params={"from": "2999-01-01T00:00:00Z"})
    ).json()
    assert future["items"] == []
    assert_error(
        await client.get("/api/audit-logs", headers=admin.headers, params={"from": "yesterday"}),
        422,
        "VALIDATION_ERROR",
    )


async def test_rows_hashed_before_0008_still_verify(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    """A chain whose older rows carry the v1 hash (written before migration 0008) verifies, and
    appends after them link on as v2; downgrading a v2 row's version is caught."""
    await client.post("/api/users", headers=admin.headers, json={"email": "old1@example.com"})
    rows = await _rows(runtime)
    chain = rows[0].chain
    tx = runtime.tx()
    prev = audit.genesis(chain)
    ordered = sorted((r for r in rows if r.chain == chain), key=lambda r: r.chain_seq)
    for row in ordered:  # rewrite this chain as the pre-0008 code wrote it
        row.hash_version, row.prev_hash = 1, prev
        row.hash = audit.row_hash(row)
        await tx.session.execute(
            update(AuditLog).where(AuditLog.id == row.id).values(hash_version=1, prev_hash=prev, hash=row.hash)
        )
        prev = row.hash
    await tx.session.execute(update(AuditChainHead).where(AuditChainHead.chain == chain).values(last_hash=prev))
    await tx.commit()
    await tx.close()
    assert (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()["valid"] is True

    for i in range(1000):  # until new rows (chains picked by entity id) land on the rewritten chain
        await client.post("/api/users", headers=admin.headers, json={"email": f"new{i}@example.com"})
        after = [r for r in await _rows(runtime) if r.chain == chain]
        if len(after) > len(ordered) + 1:
            break
    assert {r.hash_version for r in after} == {1, 2}
    assert (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()["valid"] is True

    newest = max(after, key=lambda r: r.chain_seq)
    tx = runtime.tx()
    await tx.session.execute(update(AuditLog).where(AuditLog.id == newest.id).values(hash_version=1))
    await tx.commit()
    await tx.close()
    bad = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert bad == {**bad, "valid": False, "firstBrokenId": str(newest.id)}
