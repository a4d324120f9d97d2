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
    forged = {**(victim.after or {}), "email": "evil@example.com"}
    await tx.session.execute(update(AuditLog).where(AuditLog.id == victim.id).values(after=forged))
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
        rehashed = audit.row_hash(row)
        assert rehashed is not None
        row.hash = rehashed
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
    assert {r.hash_version for r in after} == {1, 3}
    assert (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()["valid"] is True

    newest = max(after, key=lambda r: r.chain_seq)
    tx = runtime.tx()
    await tx.session.execute(update(AuditLog).where(AuditLog.id == newest.id).values(hash_version=1))
    await tx.commit()
    await tx.close()
    bad = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert bad == {**bad, "valid": False, "firstBrokenId": str(newest.id)}


# ------------------------------------------------------------------ v3: the hash covers stored text

FLOATS = {"ratio": 1e16, "huge": 1.5e300, "tiny": 1e-7, "negZero": -0.0, "pi": 3.14159, "list": [1e20, 2.0]}


async def test_floats_in_hashed_json_keep_the_chain_valid(
    client: httpx.AsyncClient, admin: Caller, user: Caller
) -> None:
    """jsonb gives ``1e16`` back as ``10000000000000000``: the row must still verify."""
    grant = await client.post(
        "/api/credits/grant", headers=admin.headers, json={"userId": user.id, "amount": 100, "reason": "adjustment"}
    )
    assert grant.status_code == 201, grant.text
    for metadata in ({"ratio": 1e16}, FLOATS):
        hold = await client.post(
            "/api/credits/holds", headers=admin.headers, json={"userId": user.id, "amount": 10, "metadata": metadata}
        )
        assert hold.status_code == 201, hold.text
    verify = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert verify == {**verify, "valid": True, "brokenIds": [], "brokenCount": 0}
    assert verify["checked"] >= 2
    assert "firstBrokenId" not in verify or verify["firstBrokenId"] is None


async def _tamper(runtime: Runtime, row_id: object, **values: object) -> None:
    tx = runtime.tx()
    try:
        await tx.session.execute(update(AuditLog).where(AuditLog.id == row_id).values(**values))
        await tx.commit()
    finally:
        await tx.close()


async def test_verify_reports_every_broken_row(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    for i in range(8):
        await client.post("/api/users", headers=admin.headers, json={"email": f"many{i}@example.com"})
    rows = {r.after["email"]: r for r in await _rows(runtime) if r.after and "email" in r.after}
    edited, retexted, renumbered = rows["many1@example.com"], rows["many4@example.com"], rows["many6@example.com"]
    # A column edited (the listing would show it), the stored text edited, a float made an int.
    assert edited.after is not None and retexted.content is not None
    await _tamper(runtime, edited.id, after={**edited.after, "email": "evil@example.com"})
    await _tamper(runtime, retexted.id, content=retexted.content.replace("many4", "many9"))
    await _tamper(runtime, renumbered.id, content=None)
    bad = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert bad["valid"] is False
    broken = {str(edited.id), str(retexted.id), str(renumbered.id)}
    assert set(bad["brokenIds"]) == broken and bad["brokenCount"] == 3
    assert bad["firstBrokenId"] in broken
    total = len(await _rows(runtime))
    assert bad["checked"] == total  # the walk went on to the end of every chain


async def test_values_that_only_look_different_still_verify(
    client: httpx.AsyncClient, admin: Caller, runtime: Runtime
) -> None:
    """The columns are compared with the hashed text by value: jsonb's rendering of a number is
    not a change, a different number is."""
    body = {"userId": admin.id, "amount": 5, "reason": "adjustment"}
    assert (await client.post("/api/credits/grant", headers=admin.headers, json=body)).status_code == 201
    body = {"userId": admin.id, "amount": 5, "metadata": {"ratio": 1e16}}
    assert (await client.post("/api/credits/holds", headers=admin.headers, json=body)).status_code == 201
    row = next(r for r in await _rows(runtime) if r.after and (r.after.get("metadata") or {}).get("ratio"))
    assert row.after is not None
    assert row.content is not None and '"ratio":1e+16' in row.content  # hashed as written
    await _tamper(runtime, row.id, after={**row.after, "metadata": {"ratio": 10**16}})
    assert (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()["valid"] is True
    await _tamper(runtime, row.id, after={**row.after, "metadata": {"ratio": 10**16 + 1}})
    bad = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert (bad["valid"], bad["brokenIds"]) == (False, [str(row.id)])


async def test_rows_hashed_before_0010_still_verify(client: httpx.AsyncClient, admin: Caller, runtime: Runtime) -> None:
    """Rows written with hash v2 (from their columns, no stored text) keep verifying next to v3."""
    for i in range(3):
        await client.post("/api/users", headers=admin.headers, json={"email": f"v2-{i}@example.com"})
    rows = await _rows(runtime)
    chain = rows[0].chain
    prev = audit.genesis(chain)
    tx = runtime.tx()
    for row in sorted((r for r in rows if r.chain == chain), key=lambda r: r.chain_seq):
        row.hash_version, row.prev_hash, row.content = 2, prev, None
        row.hash = audit.link(prev, row.chain_seq, audit.content_digest(row))
        await tx.session.execute(
            update(AuditLog)
            .where(AuditLog.id == row.id)
            .values(hash_version=2, prev_hash=prev, hash=row.hash, content=None)
        )
        prev = row.hash
    await tx.session.execute(update(AuditChainHead).where(AuditChainHead.chain == chain).values(last_hash=prev))
    await tx.commit()
    await tx.close()
    ok = (await client.get("/api/audit-logs/verify", headers=admin.headers)).json()
    assert ok["valid"] is True, ok
    assert {r.hash_version for r in await _rows(runtime)} == {2, 3}
