"""Promo codes' rules: creation (given, generated, batches), changes, and redemption.

A redemption is one transaction: the guarded counter UPDATE on the code, the guarded per-user
upsert, the ledger grant (reason ``promo``), the redemption row and the audit row commit
together or not at all. When a guard refuses, the code is read only to say why.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from aihub.config import Settings
from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.promos import repository as repo
from aihub.core.promos.schemas import (
    PromoBatchIn,
    PromoBatchOut,
    PromoIn,
    PromoOut,
    PromoPatch,
    PromoTerms,
    RedeemOut,
    RedemptionOut,
)
from aihub.core.webhooks import service as webhooks
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound, ValidationFailed
from aihub.kit.pagination import Paged, PageParams, paged
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import PromoCode

log = structlog.get_logger("aihub.promos")
T = TypeVar("T")

# No 0/O, 1/I/L: a code read aloud or copied from paper types back unambiguously.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
GROUPS, GROUP_LEN = 4, 4  # 16 symbols of 31: ~79 bits from `secrets`
_ATTEMPTS = 5


class PromoNotFound(NotFound):
    code, message = "PROMO_NOT_FOUND", "No such promo code"


class PromoExpired(AppError):
    status_code, code, message = 410, "PROMO_EXPIRED", "This promo code has expired"


class PromoNotStarted(Conflict):
    code, message = "PROMO_NOT_STARTED", "This promo code cannot be redeemed yet"


class PromoInactive(Conflict):
    code, message = "PROMO_INACTIVE", "This promo code is not active"


class PromoExhausted(Conflict):
    code, message = "PROMO_EXHAUSTED", "This promo code has been fully redeemed"


class PromoAlreadyRedeemed(Conflict):
    code, message = "PROMO_ALREADY_REDEEMED", "You have already redeemed this promo code"


class PromoCodeTaken(Conflict):
    code, message = "PROMO_CODE_TAKEN", "A promo code with this code exists"


class PromoMaxBelowRedeemed(Conflict):
    code, message = "PROMO_MAX_BELOW_REDEEMED", "maxRedemptions cannot be below the redemptions already made"


class PromoCodeCollision(Conflict):
    code, message = "PROMO_CODE_COLLISION", "Could not generate unique codes; retry"


class PromoRateLimited(AppError):
    status_code, code, message = 429, "PROMO_RATE_LIMITED", "Too many failed promo code attempts, try again later"


# The refusals a guesser would see: every one counts towards the user's failed-attempt limit;
# only PROMO_NOT_FOUND counts towards the client address's.
REFUSALS = (PromoNotFound, PromoExpired, PromoNotStarted, PromoInactive, PromoExhausted, PromoAlreadyRedeemed)


# ------------------------------------------------------------------------------ codes


def normalise(code: str) -> str:
    """Codes are case-insensitive and surrounding whitespace is a copy-paste accident."""
    return code.strip().upper()


def generate_code(prefix: str | None = None) -> str:
    groups = ["".join(secrets.choice(ALPHABET) for _ in range(GROUP_LEN)) for _ in range(GROUPS)]
    body = "-".join(groups)
    return f"{normalise(prefix)}-{body}" if prefix else body


def _new(tx: Tx, code: str, terms: PromoTerms, now: dt.datetime) -> PromoCode:
    actor = tx.info.get(audit.ACTOR)
    return PromoCode(
        id=uuid.uuid4(),
        code=code,
        credits=terms.credits,
        max_redemptions=terms.max_redemptions,
        per_user_limit=terms.per_user_limit,
        starts_at=terms.starts_at,
        expires_at=terms.expires_at,
        active=True,
        description=terms.description,
        created_by=actor.id if actor is not None else None,
        redeemed_count=0,
        credits_granted=0,
        created_at=now,
        updated_at=now,
    )


async def _insert(tx: Tx, make_codes: Callable[[], list[str]], terms: PromoTerms, *, given: bool) -> list[PromoOut]:
    """Insert a set of codes; generated ones are drawn again on a (vanishingly rare) collision."""
    for _ in range(_ATTEMPTS):
        now = utcnow()
        wanted = make_codes()
        if len(set(wanted)) == len(wanted):
            promos = [_new(tx, code, terms, now) for code in wanted]
            if await repo.add(tx.session, promos):
                made = [PromoOut.read(promo) for promo in promos]
                for promo in made:
                    audit.record(tx, "promo.create", "promo_code", promo.id, after=promo.snapshot())
                return made
        if given:
            raise PromoCodeTaken(details={"code": wanted[0]})
    raise PromoCodeCollision


async def create(tx: Tx, body: PromoIn) -> PromoOut:
    code = normalise(body.code) if body.code else None
    promos = await _insert(tx, lambda: [code or generate_code()], body, given=code is not None)
    return promos[0]


async def create_batch(tx: Tx, body: PromoBatchIn) -> PromoBatchOut:
    make = lambda: [generate_code(body.prefix) for _ in range(body.count)]  # noqa: E731
    return PromoBatchOut(items=await _insert(tx, make, body, given=False))


# ------------------------------------------------------------------------------ admin reads and changes


async def get(tx: Tx, promo_id: uuid.UUID) -> PromoCode:
    promo = await repo.get(tx.session, promo_id)
    if promo is None:
        raise PromoNotFound
    return promo


async def update(tx: Tx, promo_id: uuid.UUID, patch: PromoPatch) -> PromoOut:
    """Apply the sent fields. The row is locked (PostgreSQL) so a concurrent redemption cannot
    slip between the maxRedemptions check and the write; the CHECK constraint is the backstop."""
    promo = await repo.get(tx.session, promo_id, for_update=True)
    if promo is None:
        raise PromoNotFound
    before = PromoOut.read(promo)
    changes = patch.model_dump(exclude_unset=True)  # only the fields sent change
    merged = before.model_copy(update=changes)
    if merged.max_redemptions is not None and merged.max_redemptions < promo.redeemed_count:
        raise PromoMaxBelowRedeemed(details={"redeemedCount": promo.redeemed_count})
    starts, expires = merged.starts_at, merged.expires_at
    if starts is not None and expires is not None and expires <= starts:
        raise ValidationFailed(details=[{"field": "body.expiresAt", "message": "expiresAt must be after startsAt"}])
    for name, value in changes.items():
        setattr(promo, name, value)
    promo.updated_at = utcnow()
    await tx.session.flush()
    after = PromoOut.read(promo)
    audit.record(tx, "promo.update", "promo_code", promo.id, before=before.snapshot(), after=after.snapshot())
    return after


async def list_codes(tx: Tx, params: PageParams, *, active: bool | None, code: str | None) -> Paged[PromoCode]:
    stmt = repo.search(params, active=active, code=normalise(code) if code else None)
    return paged(await repo.fetch(tx.session, stmt), params, lambda p: (p.created_at, p.id))


async def list_redemptions(tx: Tx, promo_id: uuid.UUID, params: PageParams) -> Paged[RedemptionOut]:
    if await repo.get(tx.session, promo_id) is None:
        raise PromoNotFound
    rows = await repo.redemptions_page(tx.session, promo_id, params)
    page = paged(rows, params, lambda pair: (pair[0].created_at, pair[0].id))
    return Paged([RedemptionOut.read(row, email=email) for row, email in page.items], page.next_cursor)


# ------------------------------------------------------------------------------ redemption


async def _why_not(tx: Tx, code: str, user_id: uuid.UUID, now: dt.datetime) -> AppError:
    """The guarded UPDATE matched nothing: read the code to tell the client why (never to decide)."""
    promo = await repo.by_code(tx.session, code)
    if promo is None:
        return PromoNotFound()
    if not promo.active:
        return PromoInactive()
    if promo.expires_at is not None and promo.expires_at <= now:
        return PromoExpired(details={"expiresAt": promo.expires_at.isoformat()})
    if promo.starts_at is not None and promo.starts_at > now:
        return PromoNotStarted(details={"startsAt": promo.starts_at.isoformat()})
    # A user who used up their share learns that rather than that the campaign ran out.
    if await repo.user_count(tx.session, promo.id, user_id) >= promo.per_user_limit:
        return PromoAlreadyRedeemed()
    return PromoExhausted()


async def redeem(tx: Tx, user_id: uuid.UUID, typed: str) -> RedeemOut:
    code, now = normalise(typed), utcnow()
    won = await repo.claim(tx.session, code, now)
    if won is None:
        raise await _why_not(tx, code, user_id, now)
    seq = await repo.count_user(tx.session, won.id, user_id, won.per_user_limit)
    if seq is None:
        raise PromoAlreadyRedeemed(details={"perUserLimit": won.per_user_limit})  # rolls the claim back too
    txn = await credits.grant(
        tx, user_id, won.credits, reason="promo", metadata={"promoId": str(won.id), "code": won.code}
    )
    redemption_id = uuid.uuid4()
    await repo.add_redemption(
        tx.session,
        id=redemption_id,
        promo_id=won.id,
        user_id=user_id,
        seq=seq,
        credits=won.credits,
        transaction_id=txn.id,
        created_at=now,
    )
    audit.record(
        tx,
        "promo.redeem",
        "promo_code",
        won.id,
        after={
            "redemptionId": str(redemption_id),
            "userId": str(user_id),
            "credits": won.credits,
            "transactionId": str(txn.id),
            "seq": seq,
        },
    )
    if won.exhausted:
        # Outbox only (no runtime here): the retry sweep sends it within seconds.
        data = {"promoId": str(won.id), "code": won.code, "maxRedemptions": won.max_redemptions}
        await webhooks.emit(tx, None, "promo.exhausted", data)
    return RedeemOut(code=won.code, credits=won.credits, balance=txn.balance_after, transaction_id=txn.id)


# ------------------------------------------------------------------------------ failed-attempt limit
#
# Count first, evaluate second (as the login lockout does): an attempt takes a slot on the
# user's counter (and the address's) in one atomic INCR before the code is even looked up, so
# 30 parallel wrong codes get exactly `limit` evaluations and the rest 429. Once the outcome is
# known, a slot that should not count is handed back: a success on both counters; on the
# address's, every refusal but PROMO_NOT_FOUND, since only a code that does not exist is a
# guess (a sold-out campaign must not lock a whole office out). In-flight attempts hold a slot,
# so one user cannot have more than `limit` redemptions running at the same instant.


def _retry_after(wait: float | None, window: int) -> PromoRateLimited:
    retry = max(1, int(wait if wait is not None else window))
    return PromoRateLimited(headers={"Retry-After": str(retry)}, details={"retryAfterSeconds": retry})


async def _take_slot(store: Store, key: str, limit: int, window: int) -> bool | None:
    """One atomic count-and-check: ``True`` within the limit, ``False`` over it, ``None`` when
    the store is down (fail open: the codes' entropy still makes guessing hopeless)."""
    try:
        return await store.incr(key, ttl=window) <= limit
    except StoreUnavailable:
        log.warning("promo_limit_unavailable")
        return None


async def _give_back(store: Store, keys: list[str], window: int) -> None:
    try:
        for key in keys:
            await store.incr(key, -1, ttl=window)
    except StoreUnavailable:
        log.warning("promo_limit_unavailable")


async def _refuse_over_limit(store: Store, key: str, window: int) -> PromoRateLimited:
    try:
        wait = await store.ttl(key)
    except StoreUnavailable:
        wait = None
    return _retry_after(wait, window)


async def redeem_limited(
    tx: Tx,
    store: Store,
    settings: Settings,
    user_id: uuid.UUID,
    run: Callable[[], Awaitable[T]],
) -> T:
    """``run`` (which redeems: :func:`redeem`, or through the ledger engine) behind the
    failed-attempt limits: per user (every refusal counts) and per client address (only codes
    that do not exist count, with its own, higher threshold)."""
    window = settings.promo_failure_window_seconds
    user_key = f"promo:fail:user:{user_id}"
    ip_key = f"promo:fail:ip:{tx.ip}" if tx.ip and settings.promo_max_failures_per_ip > 0 else None
    held: list[str] = []  # counters this attempt took a slot on
    if settings.promo_max_failures_per_user > 0:
        taken = await _take_slot(store, user_key, settings.promo_max_failures_per_user, window)
        if taken is False:
            raise await _refuse_over_limit(store, user_key, window)
        if taken:
            held.append(user_key)
    if ip_key is not None:
        taken = await _take_slot(store, ip_key, settings.promo_max_failures_per_ip, window)
        if taken is False:
            await _give_back(store, held, window)  # not evaluated: not the user's failure
            raise await _refuse_over_limit(store, ip_key, window)
        if taken:
            held.append(ip_key)
    try:
        result = await run()
    except PromoNotFound:
        raise  # a guess: it stays counted on both
    except REFUSALS:
        await _give_back(store, [k for k in held if k != user_key], window)
        raise
    except Exception:
        await _give_back(store, held, window)  # our failure, not the caller's
        raise
    await _give_back(store, held, window)
    return result
