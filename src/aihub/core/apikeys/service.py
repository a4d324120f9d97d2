"""API keys: issue, list, narrow, revoke, and verify a presented key.

A key is ``ahk_`` + an 8-character public prefix + 43 characters of ``token_urlsafe(32)``
(256 random bits). It is shown once; only its SHA-256 is stored, and a presented key is found
by its prefix and compared in constant time. A key authenticates as its user, with that
user's roles and permissions as they are at each request; on top it may be restricted
(models, addresses, rates, a budget). A caller authenticated by a key can only issue or widen
keys within that key's own restrictions: a key never yields more than its holder has.

Revocation is immediate in core (every request reads the key row) and at the gateway within
one request: after commit a marker ``blacklist:apikey:<id>`` is written to the shared store,
which the gateway reads in its one rate-limit round trip. A suspended or deleted user gets
``blacklist:apikey-user:<id>`` the same way, its value ``suspended`` or ``deleted``: the gateway
answers 403 ACCOUNT_SUSPENDED or 401 INVALID_API_KEY, as core does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import string
import uuid
from dataclasses import dataclass, replace
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from aihub.core.apikeys import repository as repo
from aihub.core.apikeys.schemas import (
    BudgetAudit,
    BudgetOut,
    KeyAudit,
    KeyCreated,
    KeyIdentity,
    KeyIn,
    KeyOut,
    KeyPatch,
)
from aihub.core.audit import service as audit
from aihub.core.rbac.service import Person, Principal
from aihub.kit.apikeys import KEY_PREFIX, InvalidApiKey, KeyExpired, looks_like_key
from aihub.kit.db import Tx, as_utc, utcnow
from aihub.kit.errors import Forbidden, NotFound, ValidationFailed
from aihub.kit.pagination import Paged, PageParams, page_of
from aihub.kit.store import Store, StoreUnavailable
from aihub.models import ApiKey, User

log = structlog.get_logger("aihub.apikeys")

_PREFIX_LEN = 8
_ALPHABET = string.ascii_lowercase + string.digits
_MIN_LEN = len(KEY_PREFIX) + _PREFIX_LEN + 32
_MAX_LEN = 200
# Long enough to outlive any gateway's cached copy of the key (which it then fetches again
# from core, which refuses it).
MARKER_TTL_SECONDS = 86_400


class KeyNotFound(NotFound):
    code, message = "KEY_NOT_FOUND", "No such API key"


class KeyExceedsOwner(Forbidden):
    code, message = "KEY_EXCEEDS_OWNER", "A key cannot have more than the key that creates it"


def key_marker(key_id: uuid.UUID | str) -> str:
    return f"blacklist:apikey:{key_id}"


def user_marker(user_id: uuid.UUID | str) -> str:
    return f"blacklist:apikey-user:{user_id}"


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _generate() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(_PREFIX_LEN))
    return prefix, f"{KEY_PREFIX}{prefix}{secrets.token_urlsafe(32)}"


# ------------------------------------------------------------------ periods of a budget


def budget_period(kind: str, now: dt.datetime) -> tuple[str, dt.datetime | None]:
    """(counter key, reset time) of a budget period; ``total`` never resets."""
    if kind == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"d:{start:%Y-%m-%d}", start + dt.timedelta(days=1)
    if kind == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return f"m:{start:%Y-%m}", (start + dt.timedelta(days=32)).replace(day=1)
    return "t", None


def minute_key(now: dt.datetime) -> str:
    return f"tm:{now:%Y-%m-%dT%H:%M}"


# ------------------------------------------------------------------ rules


def model_allowed(rules: list[str] | None, provider: str, model: str) -> bool:
    if rules is None:
        return True
    return f"{provider}/{model}" in rules or f"{provider}/*" in rules


def ip_allowed(networks: list[str] | None, address: str) -> bool:
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net) for net in networks)


def status_of(key: ApiKey, now: dt.datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    expires = as_utc(key.expires_at)
    if expires is not None and expires <= now:
        return "expired"
    return "active"


def _model_covered(rule: str, parent: list[str]) -> bool:
    provider = rule.split("/", 1)[0]
    return rule in parent or f"{provider}/*" in parent


def _network_covered(net: str, parent: list[str]) -> bool:
    child = ipaddress.ip_network(net)
    for p in parent:
        outer = ipaddress.ip_network(p)
        if child.version == outer.version and child.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


@dataclass(frozen=True, slots=True)
class Rules:
    """A key's restrictions, as a new or changed key would have them (None: unrestricted)."""

    models: list[str] | None
    allowed_ips: list[str] | None
    requests_per_minute: int | None
    tokens_per_minute: int | None
    budget_max_credits: int | None
    expires_at: dt.datetime | None

    @classmethod
    def of(cls, source: KeyIn | ApiKey, budget_max_credits: int | None, expires_at: dt.datetime | None) -> Rules:
        """The rules of a key (or of a new key's body), its budget and expiry as given."""
        models, ips = source.models, source.allowed_ips
        return cls(models, ips, source.requests_per_minute, source.tokens_per_minute, budget_max_credits, expires_at)

    def patched(self, body: KeyPatch) -> Rules:
        """These rules with the fields the client sent (an explicit null lifts one)."""
        sent = body.model_fields_set
        changes: dict[str, Any] = {f: getattr(body, f) for f in _RULE_FIELDS if f in sent}
        if "budget" in sent:
            changes["budget_max_credits"] = body.budget.max_credits if body.budget else None
        return replace(self, **changes)


# The rules a PATCH sets as they come (the budget's two columns come from one field).
_RULE_FIELDS = ("models", "allowed_ips", "requests_per_minute", "tokens_per_minute", "expires_at")


def _narrowing(parent: ApiKey, rules: Rules) -> list[str]:
    """The fields in which ``rules`` would give more than ``parent`` (a key issuing a key)."""
    wider: list[str] = []
    if parent.models is not None:
        models = rules.models
        if models is None or not all(_model_covered(m, parent.models) for m in models):
            wider.append("models")
    if parent.allowed_ips is not None:
        nets = rules.allowed_ips
        if nets is None or not all(_network_covered(n, parent.allowed_ips) for n in nets):
            wider.append("allowedIps")
    for limit, value, name in (
        (parent.requests_per_minute, rules.requests_per_minute, "requestsPerMinute"),
        (parent.tokens_per_minute, rules.tokens_per_minute, "tokensPerMinute"),
    ):
        if limit is not None and (value is None or value > limit):
            wider.append(name)
    if parent.budget_max_credits is not None:
        budget = rules.budget_max_credits
        if budget is None or budget > parent.budget_max_credits:
            wider.append("budget")
    parent_expiry = as_utc(parent.expires_at)
    if parent_expiry is not None:
        expiry = rules.expires_at
        if expiry is None or expiry > parent_expiry:
            wider.append("expiresAt")
    return wider


def _caller_key(actor: Principal) -> ApiKey | None:
    return actor.api_key


def _caller_id(actor: Principal) -> uuid.UUID | None:
    key = _caller_key(actor)
    return key.id if key is not None else None


def _owner(actor: Person, user_id: uuid.UUID | None) -> uuid.UUID:
    """Whose key: one's own; another user's only for an admin."""
    if user_id is None or user_id == actor.user_id:
        return actor.user_id
    if not actor.is_admin:
        raise Forbidden("Only an administrator may manage another user's keys")
    return user_id


# ------------------------------------------------------------------ views


async def state(tx: Tx, key: ApiKey, now: dt.datetime | None = None) -> KeyOut:
    """A key as its owner sees it: its rules, its budget used this period, its status now."""
    now = now or utcnow()
    budget = None
    if key.budget_max_credits is not None and key.budget_period is not None:
        period_key, resets = budget_period(key.budget_period, now)
        used, _ = await repo.counter(tx.session, key.id, period_key)
        budget = BudgetOut(max_credits=key.budget_max_credits, period=key.budget_period, used=used, resets_at=resets)
    return KeyOut.read(key, budget=budget, status=status_of(key, now))


def _audited(key: ApiKey) -> KeyAudit:
    budget = (
        None
        if key.budget_max_credits is None
        else BudgetAudit(max_credits=key.budget_max_credits, period=key.budget_period)
    )
    return KeyAudit.read(
        key,
        user_id=str(key.user_id),
        budget=budget,
        expires_at=key.expires_at.isoformat() if key.expires_at else None,
        revoked_at=key.revoked_at.isoformat() if key.revoked_at else None,
    )


# ------------------------------------------------------------------ CRUD


def _check_expiry(expiry: dt.datetime | None, now: dt.datetime) -> None:
    if expiry is not None and expiry <= now:
        raise ValidationFailed(details=[{"field": "body.expiresAt", "message": "must be in the future"}])


async def _locked_parent(tx: Tx, actor: Principal) -> ApiKey | None:
    """The key the caller authenticated with, locked and as committed now: a key revoked or
    narrowed while one of its requests was on the way cannot still issue or widen a key."""
    parent = _caller_key(actor)
    if parent is None:
        return None
    fresh = await repo.get(tx.session, parent.id, for_update=True)
    if fresh is None or fresh.revoked_at is not None:
        raise InvalidApiKey
    if status_of(fresh, utcnow()) == "expired":
        raise KeyExpired
    return fresh


async def create(tx: Tx, actor: Person, body: KeyIn) -> KeyCreated:
    """The new key, the secret itself in this answer only."""
    owner = _owner(actor, body.user_id)
    _check_expiry(body.expires_at, utcnow())
    parent = await _locked_parent(tx, actor)
    if parent is not None:
        budget = body.budget.max_credits if body.budget else None
        wider = _narrowing(parent, Rules.of(body, budget, body.expires_at))
        if wider:
            raise KeyExceedsOwner(details={"fields": wider})
    user = await tx.session.get(User, owner)
    if user is None or user.status == "deleted":
        raise NotFound("No such user", code="USER_NOT_FOUND")
    now = utcnow()
    key, raw = await _insert(tx, actor, owner, body, now)
    after = {**_audited(key).model_dump(), "issuedByKey": str(parent.id) if parent is not None else None}
    audit.record(tx, "apikey.create", "api_key", key.id, after=after)
    return KeyCreated.read(await state(tx, key, now), key=raw)


_PREFIX_ATTEMPTS = 5


async def _insert(tx: Tx, actor: Principal, owner: uuid.UUID, body: KeyIn, now: dt.datetime) -> tuple[ApiKey, str]:
    """A new key row under a fresh prefix. The prefix is unique (the key is found by it); 36^8
    makes a clash very unlikely, and one is retried with another prefix, never a 500."""
    for attempt in range(1, _PREFIX_ATTEMPTS + 1):
        try:
            async with tx.savepoint():  # a clash undoes this row only, not the request
                key, raw = _new_row(actor, owner, body, now)
                tx.session.add(key)
                await tx.session.flush()
                return key, raw
        except IntegrityError:
            if attempt == _PREFIX_ATTEMPTS:
                raise
            log.warning("apikey_prefix_clash", attempt=attempt)
    raise AssertionError("unreachable")


def _new_row(actor: Principal, owner: uuid.UUID, body: KeyIn, now: dt.datetime) -> tuple[ApiKey, str]:
    prefix, raw = _generate()
    budget = body.budget
    key = ApiKey(
        id=uuid.uuid4(),
        user_id=owner,
        name=body.name,
        prefix=prefix,
        secret_hash=digest(raw),
        models=body.models,
        allowed_ips=body.allowed_ips,
        requests_per_minute=body.requests_per_minute,
        tokens_per_minute=body.tokens_per_minute,
        budget_max_credits=budget.max_credits if budget else None,
        budget_period=budget.period if budget else None,
        created_by=actor.id,
        expires_at=body.expires_at,
        created_at=now,
        updated_at=now,
    )
    return key, raw


async def _visible(tx: Tx, actor: Principal, key_id: uuid.UUID, *, for_update: bool = False) -> ApiKey:
    key = await repo.get(tx.session, key_id, for_update=for_update)
    if key is None or (key.user_id != actor.user_id and not actor.is_admin):
        raise KeyNotFound  # another user's key is as unknown as a missing one
    return key


async def read(tx: Tx, actor: Principal, key_id: uuid.UUID) -> KeyOut:
    return await state(tx, await _visible(tx, actor, key_id))


async def search(tx: Tx, actor: Person, params: PageParams, user_id: uuid.UUID | None) -> Paged[KeyOut]:
    owner = _owner(actor, user_id)
    rows = await repo.fetch(tx.session, repo.search(params, owner))
    items, cursor = page_of(rows, params, lambda k: (k.created_at, k.id))
    now = utcnow()
    return Paged([await state(tx, k, now) for k in items], cursor)


async def update(tx: Tx, actor: Principal, key_id: uuid.UUID, body: KeyPatch) -> KeyOut:
    """Only the fields the client sent change (an explicit null lifts a restriction)."""
    sent = body.model_fields_set
    # Locked, the changed key and the caller's own: concurrent changes and a revocation apply
    # one after the other, each judged and audited against what the one before left. Two
    # rows are locked in id order, so two keys changing each other cannot deadlock.
    caller_id = _caller_id(actor)
    if caller_id is not None and caller_id < key_id:
        parent = await _locked_parent(tx, actor)
        key = await _visible(tx, actor, key_id, for_update=True)
    else:
        key = await _visible(tx, actor, key_id, for_update=True)
        parent = await _locked_parent(tx, actor)
    now = utcnow()
    if key.revoked_at is not None:
        raise InvalidApiKey("A revoked key cannot be changed")
    _check_expiry(body.expires_at, now)
    if parent is not None:
        current = Rules.of(key, key.budget_max_credits, as_utc(key.expires_at))
        wider = _narrowing(parent, current.patched(body))
        if wider:
            raise KeyExceedsOwner(details={"fields": wider})
    before = _audited(key).model_dump()
    for field in ("name", *_RULE_FIELDS):
        if field in sent:
            value = getattr(body, field)
            if field == "name" and value is None:
                continue
            setattr(key, field, value)
    if "budget" in sent:
        budget = body.budget
        key.budget_max_credits = budget.max_credits if budget else None
        key.budget_period = budget.period if budget else None
    key.updated_at = now
    await tx.session.flush()
    audit.record(tx, "apikey.update", "api_key", key.id, before=before, after=_audited(key).model_dump())
    return await state(tx, key, now)


async def _mark(store: Store, markers: dict[str, str]) -> None:
    for marker, value in markers.items():
        try:
            await store.set(marker, value, ttl=MARKER_TTL_SECONDS)
        except StoreUnavailable:
            # Gateways then see it when their cached copy runs out (core refuses it at once).
            log.error("apikey_revocation_marker_failed", marker=marker)


async def revoke(tx: Tx, store: Store, actor: Principal, key_id: uuid.UUID) -> None:
    # Locked: of concurrent revocations one revokes and audits, the others find it revoked.
    key = await _visible(tx, actor, key_id, for_update=True)
    if key.revoked_at is None:
        before = _audited(key).model_dump()
        key.revoked_at = key.updated_at = utcnow()
        await tx.session.flush()
        audit.record(tx, "apikey.revoke", "api_key", key.id, before=before, after=_audited(key).model_dump())
    markers = {key_marker(key.id): "revoked"}

    async def publish() -> None:
        await _mark(store, markers)

    tx.after_commit(publish)


def user_status_after_commit(tx: Tx, store: Store, user_id: uuid.UUID, status: str) -> None:
    """A user was suspended, deleted or reactivated: tell every gateway at once. The marker's
    value is the reason, so a gateway answers a suspended user's key as core answers that
    user's JWT (403 ACCOUNT_SUSPENDED) and a deleted user's as an unknown key."""

    async def publish() -> None:
        if status != "active":
            await _mark(store, {user_marker(user_id): status})
            return
        try:
            await store.delete(user_marker(user_id))
        except StoreUnavailable:
            log.error("apikey_user_marker_clear_failed", user_id=str(user_id))

    tx.after_commit(publish)


# ------------------------------------------------------------------ verification


async def verify(tx: Tx, raw: str) -> tuple[ApiKey, User]:
    """The key and its user, or 401 INVALID_API_KEY / KEY_EXPIRED. The user's status is the
    caller's to judge (suspended gets its own answer)."""
    if not looks_like_key(raw) or not (_MIN_LEN <= len(raw) <= _MAX_LEN):
        raise InvalidApiKey
    key = await repo.by_prefix(tx.session, raw[len(KEY_PREFIX) : len(KEY_PREFIX) + _PREFIX_LEN])
    # compare_digest over equal-length hex strings: the comparison leaks nothing about the hash.
    if key is None or not hmac.compare_digest(digest(raw), key.secret_hash) or key.revoked_at is not None:
        raise InvalidApiKey
    if status_of(key, utcnow()) == "expired":
        raise KeyExpired
    user = await tx.session.get(User, key.user_id)
    if user is None or user.status == "deleted":
        raise InvalidApiKey
    return key, user


def identity(actor: Principal) -> KeyIdentity:
    """GET /api/keys/current: what the gateway needs to admit this key."""
    key = _caller_key(actor)
    if key is None:
        raise Forbidden("This endpoint needs an API key")
    roles = list(actor.effective.roles)
    return KeyIdentity.read(
        key,
        role=roles[0] if roles else "guest",
        roles=roles,
        permissions=["*"] if actor.is_admin else sorted(actor.effective.permissions),
    )
