"""Sora2 video tool: session tokens, and hold-then-capture billing of generations.

A generation holds its price up front, so the tool cannot start a video the user cannot pay
for; completion captures at most what was held (a shorter video costs less, the rest is
released); failure releases everything. Nobody pays for a video that was not made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import secrets
import uuid
from decimal import Decimal

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.pricing import service as pricing
from aihub.core.sora import repository as repo
from aihub.core.sora import schemas
from aihub.core.usage import service as usage
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound
from aihub.models import SoraGeneration, SoraSession, User

TOKEN_PREFIX = "VERIFIED-"  # noqa: S105 - a public prefix, not a secret
SESSION_TTL = dt.timedelta(days=7)
PROVIDER, MODEL = "openai", "sora2"
RESOLUTIONS = {"480p": Decimal("0.5"), "720p": Decimal(1), "1080p": Decimal(2)}
DEFAULT_RESOLUTION = "720p"


class InvalidSession(AppError):
    status_code, code, message = 401, "INVALID_SESSION", "The session token is invalid, expired or revoked"


class SessionNotFound(NotFound):
    code, message = "SESSION_NOT_FOUND", "No such session"


class GenerationNotFound(NotFound):
    code, message = "GENERATION_NOT_FOUND", "No such generation"


class GenerationResolved(Conflict):
    code, message = "GENERATION_NOT_PENDING", "The generation was already completed, failed or expired"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_session(tx: Tx, user_id: uuid.UUID) -> schemas.SessionCreated:
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)  # 192 bits
    now = utcnow()
    row = SoraSession(user_id=user_id, token_hash=_hash(token), created_at=now, expires_at=now + SESSION_TTL)
    tx.session.add(row)
    await tx.session.flush()
    audit.record(tx, "sora.session.create", "sora_session", row.id, after=schemas.SessionOut.read(row).snapshot())
    return schemas.SessionCreated.read(row, session_token=token)


async def list_sessions(tx: Tx, user_id: uuid.UUID) -> list[SoraSession]:
    return list(await repo.sessions_of(tx.session, user_id))


async def revoke_session(tx: Tx, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    if not await repo.revoke_session(tx.session, session_id, user_id, utcnow()):
        raise SessionNotFound
    audit.record(tx, "sora.session.revoke", "sora_session", session_id, after={"revoked": True})


async def authenticate(tx: Tx, token: str | None) -> tuple[SoraSession, User]:
    """The session and its user, or 401 INVALID_SESSION (one answer for every failure)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise InvalidSession
    row = await repo.session_by_hash(tx.session, _hash(token))
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise InvalidSession
    user = await tx.session.get(User, row.user_id)
    if user is None or user.status != "active":
        raise InvalidSession
    await repo.touch(tx.session, row.id, now)
    return row, user


async def cost_of(tx: Tx, seconds: Decimal, resolution: str) -> int:
    price = await pricing.require_current(tx, PROVIDER, MODEL)
    exact = seconds * price.per_second * RESOLUTIONS[resolution] + price.per_request
    return pricing.bounded_charge(exact)


async def session_info(tx: Tx, row: SoraSession, user: User) -> schemas.SessionInfo:
    account = await credits.account(tx, user.id)
    return schemas.SessionInfo(
        user=schemas.SessionUser.read(user),
        expires_at=row.expires_at,
        balance=account.balance,
        available=account.available,
    )


async def check(tx: Tx, user: User, seconds: Decimal, resolution: str) -> schemas.CheckOut:
    cost = await cost_of(tx, seconds, resolution)
    account = await credits.account(tx, user.id)
    return schemas.CheckOut(
        sufficient=account.available >= cost,
        cost=cost,
        balance=account.balance,
        available=account.available,
    )


async def start(
    tx: Tx, row: SoraSession, user: User, seconds: Decimal, resolution: str, prompt: str | None, hold_ttl: int
) -> schemas.GenerationOut:
    """Hold the price of the video; 402 INSUFFICIENT_CREDITS (and no hold) when it cannot be paid."""
    cost = await cost_of(tx, seconds, resolution)
    gen_id = uuid.uuid4()
    hold = await credits.hold(
        tx,
        user.id,
        cost,
        reason="usage",
        ttl_seconds=hold_ttl,
        metadata={"soraGenerationId": str(gen_id), "durationSeconds": str(seconds), "resolution": resolution},
    )
    gen = SoraGeneration(
        id=gen_id,
        user_id=user.id,
        session_id=row.id,
        hold_id=hold.id,
        duration_seconds=seconds,
        resolution=resolution,
        prompt=prompt,
        cost=cost,
        status="pending",
        created_at=utcnow(),
        expires_at=hold.expires_at,
    )
    tx.session.add(gen)
    await tx.session.flush()
    out = schemas.GenerationOut.read(gen)
    audit.record(tx, "sora.generation.start", "sora_generation", gen.id, after=out.snapshot())
    return out


async def _mine(tx: Tx, user: User, generation_id: uuid.UUID) -> SoraGeneration:
    gen = await repo.generation(tx.session, generation_id)
    if gen is None or gen.user_id != user.id:
        raise GenerationNotFound
    return gen


async def complete(tx: Tx, user: User, generation_id: uuid.UUID, actual_seconds: Decimal | None) -> schemas.Resolved:
    """Capture what the video cost, never more than was held; the rest goes back to the user."""
    gen = await _mine(tx, user, generation_id)
    seconds = gen.duration_seconds if actual_seconds is None else min(actual_seconds, gen.duration_seconds)
    charge = min(await cost_of(tx, seconds, gen.resolution), gen.cost)
    now = utcnow()
    if not await repo.resolve(tx.session, gen.id, user.id, "completed", now, charged=charge):
        raise GenerationResolved
    # An expired hold refuses the capture (409 HOLD_NOT_ACTIVE) and the whole request rolls back.
    txn = await credits.capture(tx, gen.hold_id, charge)
    balance = txn.balance_after
    await usage.record_settled(
        tx,
        request_id=f"sora:{gen.id}",
        user_id=user.id,
        provider=PROVIDER,
        model=MODEL,
        duration_seconds=seconds,
        charge=charge,
        transaction_id=txn.id,
        balance=balance,
        reporter_id="sora",
    )
    audit.record(tx, "sora.generation.complete", "sora_generation", gen.id, after={"charged": charge})
    return schemas.Resolved(id=gen.id, status="completed", charged=charge, balance=balance)


async def fail(tx: Tx, user: User, generation_id: uuid.UUID, reason: str | None) -> schemas.Resolved:
    """Release the whole hold: a failed video costs nothing."""
    gen = await _mine(tx, user, generation_id)
    now = utcnow()
    if not await repo.resolve(tx.session, gen.id, user.id, "failed", now, charged=0, failure_reason=reason):
        raise GenerationResolved
    # An expired hold already released itself: nothing was charged either way.
    with contextlib.suppress(credits.HoldNotActive):
        await credits.release(tx, gen.hold_id)
    audit.record(tx, "sora.generation.fail", "sora_generation", gen.id, after={"reason": reason})
    account = await credits.account(tx, user.id)
    return schemas.Resolved(id=gen.id, status="failed", charged=0, balance=account.balance)


async def read_generation(tx: Tx, user: User, generation_id: uuid.UUID) -> SoraGeneration:
    gen = await _mine(tx, user, generation_id)
    if gen.status == "pending" and gen.expires_at <= utcnow():
        await expire(tx)
        await tx.session.refresh(gen)
    return gen


async def expire(tx: Tx) -> int:
    """Mark pending generations whose hold ran out as expired (their holds release themselves)."""
    rows = await repo.expire_pending(tx.session, utcnow())
    for gen in rows:
        audit.record(tx, "sora.generation.expire", "sora_generation", gen.id, after={"status": "expired"})
    return len(rows)
