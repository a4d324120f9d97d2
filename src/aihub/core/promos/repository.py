"""SQL of promo codes. Redemption is two conditional statements, never read-check-write:

1. one UPDATE of the code's counters, guarded by every rule (active, window, maxRedemptions),
   which also locks the code's row until commit (PostgreSQL re-checks the guard on the latest
   row version after the wait, so exactly ``max_redemptions`` UPDATEs ever match);
2. one upsert of the user's counter for the code, guarded by ``per_user_limit``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Select, Uuid, bindparam, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aihub.kit.pagination import PageParams, keyset
from aihub.models import PromoCode, PromoRedemption, PromoUserCount, User

P = PromoCode


async def add(session: AsyncSession, promos: Sequence[PromoCode]) -> bool:
    """Insert codes under a savepoint; False when a code is already taken (nothing inserted)."""
    try:
        async with session.begin_nested():
            session.add_all(promos)
            await session.flush()
    except IntegrityError:
        return False
    return True


async def get(session: AsyncSession, promo_id: uuid.UUID, *, for_update: bool = False) -> PromoCode | None:
    return await session.get(PromoCode, promo_id, with_for_update=for_update)


async def by_code(session: AsyncSession, code: str) -> PromoCode | None:
    return (await session.execute(select(PromoCode).where(PromoCode.code == code))).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class Claimed:
    """The code as the winning UPDATE left it."""

    id: uuid.UUID
    code: str
    credits: int
    per_user_limit: int
    redeemed_count: int = 0
    max_redemptions: int | None = None

    @property
    def exhausted(self) -> bool:
        """This claim took the last redemption (exactly one claim can, the UPDATE is guarded)."""
        return self.max_redemptions is not None and self.redeemed_count >= self.max_redemptions


async def claim(session: AsyncSession, code: str, now: dt.datetime) -> Claimed | None:
    """Count one redemption if the code may be redeemed now; None when it may not."""
    stmt = (
        update(P)
        .where(
            P.code == code,
            P.active.is_(True),
            or_(P.max_redemptions.is_(None), P.redeemed_count < P.max_redemptions),
            or_(P.starts_at.is_(None), P.starts_at <= now),
            or_(P.expires_at.is_(None), P.expires_at > now),
        )
        .values(redeemed_count=P.redeemed_count + 1, credits_granted=P.credits_granted + P.credits)
        .returning(P.id, P.code, P.credits, P.per_user_limit, P.redeemed_count, P.max_redemptions)
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(stmt)).first()
    return None if row is None else Claimed(row[0], row[1], int(row[2]), int(row[3]), int(row[4]), row[5])


# A user's first redemption inserts n = 1; later ones add 1 only while under the limit. On
# PostgreSQL a concurrent upsert of the same (promo, user) waits for the other transaction and
# then re-checks the WHERE on the committed row, so the limit holds under any concurrency.
_COUNT_USER = text(
    """
    INSERT INTO promo_user_counts (promo_id, user_id, n) VALUES (:promo_id, :user_id, 1)
    ON CONFLICT (promo_id, user_id) DO UPDATE SET n = promo_user_counts.n + 1
    WHERE promo_user_counts.n < :per_user_limit
    RETURNING n
    """
).bindparams(bindparam("promo_id", type_=Uuid()), bindparam("user_id", type_=Uuid()))


async def count_user(session: AsyncSession, promo_id: uuid.UUID, user_id: uuid.UUID, per_user_limit: int) -> int | None:
    """The user's sequence number for this redemption, or None when the limit is reached."""
    params = {"promo_id": promo_id, "user_id": user_id, "per_user_limit": per_user_limit}
    row = (await session.execute(_COUNT_USER, params)).first()
    return None if row is None else int(row[0])


async def user_count(session: AsyncSession, promo_id: uuid.UUID, user_id: uuid.UUID) -> int:
    stmt = select(PromoUserCount.n).where(PromoUserCount.promo_id == promo_id, PromoUserCount.user_id == user_id)
    return int((await session.execute(stmt)).scalar_one_or_none() or 0)


async def add_redemption(
    session: AsyncSession,
    *,
    id: uuid.UUID,
    promo_id: uuid.UUID,
    user_id: uuid.UUID,
    seq: int,
    credits: int,
    transaction_id: uuid.UUID,
    created_at: dt.datetime,
) -> None:
    stmt = insert(PromoRedemption).values(
        id=id,
        promo_id=promo_id,
        user_id=user_id,
        seq=seq,
        credits=credits,
        transaction_id=transaction_id,
        created_at=created_at,
    )
    await session.execute(stmt)


def search(params: PageParams, *, active: bool | None, code: str | None) -> Select[Any]:
    stmt = select(PromoCode)
    if active is not None:
        stmt = stmt.where(PromoCode.active.is_(active))
    if code is not None:
        stmt = stmt.where(PromoCode.code == code)
    return keyset(stmt, PromoCode.created_at, PromoCode.id, params)


async def fetch(session: AsyncSession, stmt: Select[Any]) -> Sequence[PromoCode]:
    rows: Sequence[PromoCode] = (await session.execute(stmt)).scalars().all()
    return rows


async def redemptions_page(
    session: AsyncSession, promo_id: uuid.UUID, params: PageParams
) -> list[tuple[PromoRedemption, str | None]]:
    """Redemptions newest first, each with the user's email (None once the user is gone)."""
    joined = (
        select(PromoRedemption, User.email)
        .outerjoin(User, User.id == PromoRedemption.user_id)
        .where(PromoRedemption.promo_id == promo_id)
    )
    stmt = keyset(cast("Select[Any]", joined), PromoRedemption.created_at, PromoRedemption.id, params)
    return [(row[0], row[1]) for row in await session.execute(stmt)]
