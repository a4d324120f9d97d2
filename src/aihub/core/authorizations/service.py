"""Pre-call authorizations: reserve the worst case before the provider is called, settle after.

``authorize`` prices the call at its maximum tokens and, in ONE transaction, reserves that
against the key's budget and tokens per minute, every quota limit on the user and the key
(usage/limits.py), and the credit balance (a
hold, through the credits service). Each reservation is one atomic conditional statement, so
under any concurrency a limit that pays for N admits exactly N; any refusal rolls the others
back. On PostgreSQL these run as Work moves of the ledger engine, which has locked the user's
credit account before any of them; then key counter → quota counter. The usage-event writer
takes the same order (accounts, then counters), so a user's counters are only ever locked under
that user's account lock and concurrent authorizations, settles and usage events queue instead
of deadlocking. (SQLite has one writer at a time.)

``settle`` charges the actual cost capped at the hold, releases the rest, and replaces every
reservation by the actual usage; ``cancel`` and expiry give everything back. An authorization
resolves once: one conditional UPDATE of its status decides which of concurrent resolutions wins.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid

import structlog

from aihub.core.apikeys import repository as keys_repo
from aihub.core.apikeys import service as apikeys
from aihub.core.audit import service as audit
from aihub.core.authorizations import repository as repo
from aihub.core.authorizations.schemas import (
    DEFAULT_TTL_SECONDS,
    AuthorizationIn,
    AuthorizationOut,
    SettleIn,
    SettleOut,
)
from aihub.core.credits import service as credits
from aihub.core.pricing import service as pricing
from aihub.core.rbac.service import MissingPermission, Principal
from aihub.core.usage import limits
from aihub.core.usage import repository as usage_repo
from aihub.core.usage import service as usage
from aihub.kit.db import Tx, as_utc, utcnow
from aihub.kit.errors import AppError, Conflict, Forbidden, NotFound, ValidationFailed
from aihub.kit.idempotency import IdempotencyKeyReused
from aihub.kit.runtime import Runtime
from aihub.models import ApiKey, UsageAuthorization

log = structlog.get_logger("aihub.authorizations")

# The hold outlives its authorization a little, so whoever expires the authorization can still
# release the hold itself (the credits sweep stays a safety net).
HOLD_MARGIN_SECONDS = 60


class ModelNotAllowed(Forbidden):
    code, message = "MODEL_NOT_ALLOWED", "This API key may not use this model"


class KeyBudgetExceeded(AppError):
    status_code, code, message = 429, "KEY_BUDGET_EXCEEDED", "This call would exceed the API key's budget"


class AuthorizationNotFound(NotFound):
    code, message = "AUTHORIZATION_NOT_FOUND", "No such authorization"


class AuthorizationNotActive(Conflict):
    code, message = "AUTHORIZATION_NOT_ACTIVE", "The authorization was already settled, cancelled or has expired"


def _subject(actor: Principal, user_id: uuid.UUID | None) -> uuid.UUID:
    """For oneself (a user, or a key for its user), or for anyone with ``usage:write``."""
    if user_id is None or user_id == actor.user_id:
        if actor.user_id is None:
            raise ValidationFailed(details=[{"field": "body.userId", "message": "required for a service token"}])
        return actor.user_id
    if not actor.can("usage:write"):
        raise MissingPermission("usage:write")
    return user_id


def _key_of(actor: Principal, subject: uuid.UUID) -> ApiKey | None:
    key = actor.api_key
    return key if key is not None and key.user_id == subject else None


# ------------------------------------------------------------------ authorize


async def _reserve_key(tx: Tx, key: ApiKey, held: int, tokens: int, now: dt.datetime) -> dict[str, object]:
    """What was reserved on the key (its budget, its tokens per minute), as the authorization's
    ``reservations`` column keeps it (JSON: ``[period key, amount]`` each)."""
    reserved: dict[str, object] = {}
    if key.budget_max_credits is not None and key.budget_period is not None:
        period_key, resets = apikeys.budget_period(key.budget_period, now)
        ok = await keys_repo.reserve(
            tx.session, key.id, period_key, credits=held, tokens=0, max_credits=key.budget_max_credits, max_tokens=None
        )
        if not ok:
            details = {
                "maxCredits": key.budget_max_credits,
                "period": key.budget_period,
                "required": held,
                "resetsAt": resets.isoformat() if resets else None,
            }
            raise KeyBudgetExceeded(details=details)
        reserved["budget"] = [period_key, held]
    if key.tokens_per_minute is not None:
        period_key = apikeys.minute_key(now)
        ok = await keys_repo.reserve(
            tx.session, key.id, period_key, credits=0, tokens=tokens, max_credits=None, max_tokens=key.tokens_per_minute
        )
        if not ok:
            raise KeyBudgetExceeded(
                "This call would exceed the API key's tokens per minute",
                details={"tokensPerMinute": key.tokens_per_minute, "required": tokens},
            )
        reserved["tpm"] = [period_key, tokens]
    return reserved


async def authorize(tx: Tx, runtime: Runtime, actor: Principal, body: AuthorizationIn) -> AuthorizationOut:
    subject = _subject(actor, body.user_id)
    key = _key_of(actor, subject)
    provider, model = body.provider, body.model
    if key is not None and not apikeys.model_allowed(key.models, provider, model):
        raise ModelNotAllowed(details={"model": f"{provider}/{model}", "allowed": key.models})
    price = await pricing.require_current(tx, provider, model)
    max_in, max_out = body.max_input_tokens, body.max_output_tokens
    held = pricing.credits_for(price, input_tokens=max_in, output_tokens=max_out)
    tokens = max_in + max_out
    ttl = body.ttl_seconds or DEFAULT_TTL_SECONDS
    now = utcnow()
    auth_id = uuid.uuid4()
    reservations: dict[str, object] = {}
    if key is not None:
        reservations.update(await _reserve_key(tx, key, held, tokens, now))
    counted = await usage.count_call(
        tx,
        user_id=subject,
        key_id=key.id if key is not None else None,
        provider=provider,
        model=model,
        credits=held,
        tokens=tokens,
        now=now,
    )
    # "wide": counted in usage_windows (an authorization from before them has its rows in
    # usage_counters only, and settles there).
    reservations["counters"] = {"rows": [list(row) for row in counted], "credits": held, "tokens": tokens, "wide": True}
    hold_id = None
    if held > 0:
        hold = await credits.hold(
            tx,
            subject,
            held,
            reason="usage",
            ttl_seconds=ttl + HOLD_MARGIN_SECONDS,
            metadata={"authorizationId": str(auth_id), "provider": provider, "model": model},
        )
        hold_id = hold.id
    else:
        await credits.account(tx, subject)  # 404 ACCOUNT_NOT_FOUND for a user without an account
    auth = UsageAuthorization(
        id=auth_id,
        user_id=subject,
        api_key_id=key.id if key is not None else None,
        provider=provider,
        model=model,
        max_input_tokens=max_in,
        max_output_tokens=max_out,
        held_credits=held,
        hold_id=hold_id,
        reservations=reservations,
        status="active",
        created_by=actor.id,
        expires_at=now + dt.timedelta(seconds=ttl),
        created_at=now,
    )
    tx.session.add(auth)
    await tx.session.flush()
    audit.record(
        tx,
        "usage.authorize",
        "usage_authorization",
        auth_id,
        after={"userId": str(subject), "model": f"{provider}/{model}", "heldCredits": held, "holdId": str(hold_id)},
    )
    return AuthorizationOut.read(auth)


# ------------------------------------------------------------------ resolve


async def _visible(tx: Tx, actor: Principal, auth_id: uuid.UUID) -> UsageAuthorization:
    auth = await repo.get(tx.session, auth_id)
    if auth is None:
        raise AuthorizationNotFound
    if auth.user_id != actor.user_id and not actor.can("usage:write") and not actor.can("usage:read"):
        raise AuthorizationNotFound
    key = actor.api_key
    if key is not None and auth.api_key_id not in (None, key.id):
        raise AuthorizationNotFound  # one key does not see or settle another key's calls
    return auth


async def _give_back(tx: Tx, auth: UsageAuthorization, *, charged: int, tokens: int, requests: int) -> None:
    """Replace every reservation by what was used (``charged`` credits, ``tokens`` tokens;
    ``requests`` is -1 when the call never happened)."""
    res = auth.reservations or {}
    if auth.api_key_id is not None:
        if "budget" in res:
            period_key, held = res["budget"]
            await keys_repo.adjust(tx.session, auth.api_key_id, period_key, credits=charged - held, tokens=0)
        if "tpm" in res:
            period_key, reserved = res["tpm"]
            await keys_repo.adjust(tx.session, auth.api_key_id, period_key, credits=0, tokens=tokens - reserved)
    if "counters" in res:
        counters = res["counters"]
        rows = [(str(s), str(p), str(m)) for s, p, m in counters["rows"]]
        await limits.adjust(
            tx.session,
            rows,
            credits=charged - int(counters["credits"]),
            tokens=tokens - int(counters["tokens"]),
            requests=requests,
            wide=bool(counters.get("wide", False)),
        )


async def _release_hold(tx: Tx, auth: UsageAuthorization) -> None:
    if auth.hold_id is None:
        return
    try:
        await credits.release(tx, auth.hold_id)
    except credits.HoldNotActive:
        log.warning("authorization_hold_already_resolved", authorization_id=str(auth.id))


async def _expire(tx: Tx, auth: UsageAuthorization, now: dt.datetime) -> bool:
    if not await repo.expire(tx.session, auth.id, now):
        return False
    await _give_back(tx, auth, charged=0, tokens=0, requests=-1)
    await _release_hold(tx, auth)
    audit.record(tx, "usage.authorization.expire", "usage_authorization", auth.id, after={"status": "expired"})
    return True


async def _not_active(tx: Tx, auth: UsageAuthorization, now: dt.datetime) -> AppError:
    await tx.session.refresh(auth)
    expires = as_utc(auth.expires_at)
    if auth.status == "active" and expires is not None and expires <= now and await _expire(tx, auth, now):
        error = AuthorizationNotActive(details={"status": "expired"})
        error.keep_changes = True  # the expiry (and its releases) is an outcome to record
        return error
    status = "expired" if auth.status == "active" else auth.status
    return AuthorizationNotActive(details={"status": status})


async def settle(tx: Tx, actor: Principal, auth_id: uuid.UUID, body: SettleIn) -> SettleOut:
    auth = await _visible(tx, actor, auth_id)
    now = utcnow()
    if not await repo.resolve(tx.session, auth.id, "settled", now):
        raise await _not_active(tx, auth, now)
    if await usage_repo.by_request_id(tx.session, body.request_id) is not None:
        raise IdempotencyKeyReused("This requestId was already reported", details={"field": "requestId"})
    # The usage path's own pricing step: the same price and rounding as a reported event.
    price, actual = await usage.price_call(tx, auth.provider, auth.model, body.model_dump())
    tokens = body.input_tokens + body.output_tokens
    charged = min(actual, auth.held_credits)
    await _give_back(tx, auth, charged=charged, tokens=tokens, requests=0)
    transaction_id: uuid.UUID | None = None
    if auth.hold_id is not None and charged > 0:
        txn = await credits.capture(tx, auth.hold_id, charged)
        transaction_id, balance = txn.id, txn.balance_after
    else:
        await _release_hold(tx, auth)
        balance = (await credits.account(tx, auth.user_id)).balance
    event_id = await usage.record_settled(
        tx,
        request_id=body.request_id,
        user_id=auth.user_id,
        provider=auth.provider,
        model=auth.model,
        duration_seconds=body.duration_seconds,
        charge=charged,
        transaction_id=transaction_id,
        balance=balance,
        reporter_id=actor.id,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        metadata={**(body.metadata or {}), "authorizationId": str(auth.id)},
        price=price,
    )
    await repo.link_event(tx.session, auth.id, event_id)
    audit.record(
        tx,
        "usage.authorization.settle",
        "usage_authorization",
        auth.id,
        before={"status": "active", "heldCredits": auth.held_credits},
        after={"status": "settled", "credits": charged, "actualCost": actual, "usageEventId": str(event_id)},
    )
    return SettleOut(
        id=event_id,
        authorization_id=auth.id,
        request_id=body.request_id,
        credits=charged,
        balance=balance,
        overrun=actual > auth.held_credits,
    )


async def cancel(tx: Tx, actor: Principal, auth_id: uuid.UUID) -> AuthorizationOut:
    auth = await _visible(tx, actor, auth_id)
    now = utcnow()
    if not await repo.resolve(tx.session, auth.id, "cancelled", now):
        raise await _not_active(tx, auth, now)
    await _give_back(tx, auth, charged=0, tokens=0, requests=-1)
    await _release_hold(tx, auth)
    audit.record(tx, "usage.authorization.cancel", "usage_authorization", auth.id, after={"status": "cancelled"})
    await tx.session.refresh(auth)
    return AuthorizationOut.read(auth)


async def read(tx: Tx, actor: Principal, auth_id: uuid.UUID) -> AuthorizationOut:
    return AuthorizationOut.read(await _visible(tx, actor, auth_id))


async def owner(tx: Tx, auth_id: uuid.UUID) -> uuid.UUID | None:
    """Whose account an authorization moves (read before the ledger engine locks it)."""
    auth = await repo.get(tx.session, auth_id)
    return auth.user_id if auth is not None else None


async def _expire_one(tx: Tx, auth_id: uuid.UUID, now: dt.datetime) -> bool:
    auth = await repo.get(tx.session, auth_id)
    return auth is not None and await _expire(tx, auth, now)


async def expire_overdue(runtime: Runtime, *, limit: int = 200, now: dt.datetime | None = None) -> int:
    """The sweep: expire overdue authorizations, one transaction each (each takes its locks
    in the same order as a request does, so the sweep never deadlocks with one); on
    PostgreSQL each is one move of the ledger engine (its hold's release with it)."""
    from aihub.core.ledger import service as ledger  # the engine imports the credits service

    now = now or utcnow()
    tx = runtime.tx()
    try:
        due = await repo.overdue(tx.session, now, limit)
        owners = {auth_id: await owner(tx, auth_id) for auth_id in due}
    finally:
        await tx.close()
    expired = 0
    engine = ledger.engine_of(runtime)
    if engine is not None:
        for auth_id in due:
            tx = runtime.tx()
            try:
                done = await ledger.work(
                    engine,
                    tx,
                    "authorization",
                    functools.partial(_expire_one, auth_id=auth_id, now=now),
                    user_id=owners[auth_id],
                )
            finally:
                await tx.close()
            expired += done
        return expired
    for auth_id in due:
        tx = runtime.tx()
        try:
            auth = await repo.get(tx.session, auth_id)
            if auth is not None and await _expire(tx, auth, now):
                await tx.commit()
                expired += 1
        finally:
            await tx.close()
    return expired
