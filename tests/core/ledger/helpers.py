"""What the ledger engine's tests share: the process's engine, a funded user, the audit check."""

from __future__ import annotations

import uuid

from aihub.core.audit import service as audit
from aihub.core.ledger import service as ledger
from aihub.core.ledger.engine import LedgerEngine, Move
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user


def engine_of(rt: Runtime) -> LedgerEngine:
    found = ledger.engine_of(rt)
    assert found is not None
    return found


def move(user_id: str, amount: int, reason: str = "usage") -> Move:
    return Move(user_id=uuid.UUID(user_id), amount=amount, reason=reason, render=lambda view: b"{}")


async def funded(rt: Runtime, amount: int, roles: list[str] | None = None) -> Caller:
    """A new user whose account holds ``amount`` (granted through the engine)."""
    user = await create_user(rt, roles=roles)
    granted = await engine_of(rt).submit(move(user.id, amount, "purchase"))
    assert granted.error is None
    return user


async def audit_valid(rt: Runtime) -> bool:
    tx = rt.tx()
    try:
        return (await audit.verify(tx)).valid
    finally:
        await tx.close()
