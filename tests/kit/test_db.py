"""The unit of work on both engines: one real transaction, savepoints nested inside it."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from aihub.kit.runtime import Runtime
from aihub.models import User


async def _count(rt: Runtime) -> int:
    tx = rt.tx()
    try:
        return int((await tx.session.execute(select(func.count()).select_from(User))).scalar_one())
    finally:
        await tx.close()


async def test_released_savepoint_is_undone_by_the_outer_rollback(runtime: Runtime) -> None:
    before = await _count(runtime)
    tx = runtime.tx()
    await tx.session.execute(select(func.count()).select_from(User))  # a read first, as requests do
    async with tx.session.begin_nested():
        tx.session.add(User(id=uuid.uuid4(), email=f"{uuid.uuid4().hex}@example.com"))
    await tx.close()  # no commit: everything, the released savepoint included, is rolled back
    assert await _count(runtime) == before


async def test_commit_keeps_the_work(runtime: Runtime) -> None:
    before = await _count(runtime)
    tx = runtime.tx()
    async with tx.session.begin_nested():
        tx.session.add(User(id=uuid.uuid4(), email=f"{uuid.uuid4().hex}@example.com"))
    await tx.commit()
    await tx.close()
    assert await _count(runtime) == before + 1
