"""``Idempotency-Key`` for writes a client may retry (money moves first; usage, promos, sora next).

The key is claimed with one upsert in the SAME transaction as the work it guards, and the
response is stored in that transaction too, so the work and its stored outcome commit or
vanish together:

* first request: the claim inserts the row, the work runs, the response is stored, commit;
* replay within the TTL with the same request: the stored status and body come back and
  nothing runs again;
* the same key with another request: 422 ``IDEMPOTENCY_KEY_REUSED``;
* two concurrent requests with one key: on PostgreSQL the second claim waits on the unique
  index until the first transaction ends, then replays its outcome (or takes over the key if
  the first rolled back). SQLite has a single writer, so the question never arises there.

What is stored follows Stripe: once the work has started executing, its outcome is final
for the key, a refusal included. A deduct refused with 402 ``INSUFFICIENT_CREDITS`` replays
as that 402 even after a top-up: the client retries a *new* operation with a *new* key.
:func:`is_final` is the rule:

* stored: every 2xx, and every 4xx the work itself raised (402, 404, 409, 410, a 422 the
  service decided). The work runs in a savepoint, so a refusal rolls its own writes, hooks and
  audit entries back, while the claim and the stored refusal commit;
* not stored: anything refused before the work started (request validation 422, 401/403,
  ``IDEMPOTENCY_KEY_REUSED``/``IN_USE``: the key is not even claimed), 429 (a rate limit or
  lockout says "try later", not "this is the answer"), and 5xx (our failure: the whole
  transaction rolls back, the key stays free and a retry runs the work).

A replayed refusal has the stored status, code, message and details; its ``requestId`` is
the replay's own (the error shape always names the request that got it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request
from pydantic import BaseModel
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from aihub.kit.db import Tx, UTCDateTime, utcnow
from aihub.kit.errors import AppError
from aihub.kit.jsonutil import canonical, dumps, loads
from aihub.kit.openapi import raises
from aihub.kit.slots import Slot

T = TypeVar("T")
HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
TTL = dt.timedelta(hours=24)
# The key of the request a unit of work answers (ledger rows record it).
IDEMPOTENCY_KEY: Slot[str] = Slot("idempotency.key")


class IdempotencyKeyReused(AppError):
    status_code, code = 422, "IDEMPOTENCY_KEY_REUSED"
    message = "This Idempotency-Key was used with a different request"


class IdempotencyKeyInUse(AppError):
    status_code, code = 409, "IDEMPOTENCY_KEY_IN_USE"
    message = "A request with this Idempotency-Key is still in progress"


@dataclass(frozen=True, slots=True)
class Stored:
    status_code: int
    body: bytes


# One statement claims a new key, or takes over one older than the TTL; a live key is left
# alone (and returns no row). Plain SQL: the same text runs on PostgreSQL and SQLite ≥ 3.35.
_CLAIM = text(
    """
    INSERT INTO idempotency_keys (principal, idem_key, request_hash, created_at)
    VALUES (:principal, :key, :hash, :now)
    ON CONFLICT (principal, idem_key) DO UPDATE
        SET request_hash = excluded.request_hash, status_code = NULL, body = NULL,
            created_at = excluded.created_at
        WHERE idempotency_keys.created_at < :cutoff
    RETURNING principal
    """
).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("cutoff", type_=UTCDateTime()))

_EXISTING = text(
    "SELECT request_hash, status_code, body FROM idempotency_keys WHERE principal = :principal AND idem_key = :key"
)
_STORE = text(
    "UPDATE idempotency_keys SET status_code = :status, body = :body WHERE principal = :principal AND idem_key = :key"
)


def is_final(status_code: int) -> bool:
    """Whether an outcome of started work is what every replay of its key returns."""
    return status_code < 500 and status_code != 429


def refusal_body(exc: AppError) -> bytes:
    """The error as stored: the shape without ``requestId`` (each replay adds its own)."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.details is not None:
        body["details"] = exc.details
    return dumps(body)


def replay_body(stored: Stored, request_id: str | None) -> bytes:
    if stored.status_code < 400:
        return stored.body
    return dumps({**loads(stored.body), "requestId": request_id})


def fingerprint(principal: str, method: str, path: str, body: bytes) -> str:
    """Hash of who asked what: JSON bodies are canonicalised so key order and spacing don't count."""
    try:
        payload = canonical(loads(body)) if body else b""
    except ValueError:
        payload = body
    digest = hashlib.sha256()
    for part in (principal.encode(), method.encode(), path.encode(), payload):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def claim(session: AsyncSession, principal: str, key: str, request_hash: str) -> Stored | None:
    """Claim the key for this transaction (None), or return the outcome stored under it."""
    now = utcnow()
    params = {"principal": principal, "key": key, "hash": request_hash, "now": now, "cutoff": now - TTL}
    if (await session.execute(_CLAIM, params)).first() is not None:
        return None
    row = (await session.execute(_EXISTING, {"principal": principal, "key": key})).first()
    if row is None:  # removed between the two statements (a cleanup): a retry will claim it
        raise IdempotencyKeyInUse
    if row.request_hash != request_hash:
        raise IdempotencyKeyReused(details={"header": HEADER})
    if row.status_code is None or row.body is None:
        raise IdempotencyKeyInUse
    return Stored(int(row.status_code), bytes(row.body))


async def store(session: AsyncSession, principal: str, key: str, outcome: Stored) -> None:
    await session.execute(
        _STORE, {"status": outcome.status_code, "body": outcome.body, "principal": principal, "key": key}
    )


def render(model: type[BaseModel], result: object) -> bytes:
    """``result`` as its endpoint's ``response_model`` serialises it: read by attribute (as
    FastAPI validates a return value) and dumped by Pydantic, so a stored body is the very
    bytes the first answer had."""
    return model.model_validate(result, from_attributes=True).model_dump_json(by_alias=True).encode()


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """What an endpoint needs to run its work at most once per key."""

    key: str | None
    method: str
    path: str
    body: bytes
    request_id: str | None = None

    async def respond(
        self,
        tx: Tx,
        principal: str,
        status_code: int,
        model: type[BaseModel],
        work: Callable[[], Awaitable[T]],
    ) -> T | Response:
        """``work``'s result, which the endpoint returns for FastAPI to serialise through its
        ``response_model`` (``model``; that rendering and ``status_code``, the route's, are
        stored under the key first); a replay is the stored answer itself, with the replay header."""
        if self.key is None:
            return await work()
        request_hash = fingerprint(principal, self.method, self.path, self.body)
        stored = await claim(tx.session, principal, self.key, request_hash)
        if stored is not None:
            return self.replayed(stored)
        tx.info.set(IDEMPOTENCY_KEY, self.key)
        try:
            async with tx.savepoint():
                result = await work()
        except AppError as exc:
            if not is_final(exc.status_code):
                raise
            await store(tx.session, principal, self.key, Stored(exc.status_code, refusal_body(exc)))
            exc.keep_changes = True  # commit the claim and its stored refusal (the work was undone)
            raise
        await store(tx.session, principal, self.key, Stored(status_code, render(model, result)))
        return result

    def replayed(self, stored: Stored) -> Response:
        """A stored outcome as the answer to a replay of this request."""
        body = replay_body(stored, self.request_id)
        return Response(body, status_code=stored.status_code, media_type="application/json", headers=_REPLAYED)

    async def replay(self, tx: Tx, principal: str) -> Response | None:
        """The stored answer to this very request, read only (None: none stored yet); 422
        ``IDEMPOTENCY_KEY_REUSED`` for another request. For work whose key is claimed
        elsewhere (the ledger engine) but that must not run checks of its own on a replay."""
        if self.key is None:
            return None
        row = (await tx.session.execute(_EXISTING, {"principal": principal, "key": self.key})).first()
        if row is None or row.status_code is None or row.body is None:
            return None
        if row.request_hash != fingerprint(principal, self.method, self.path, self.body):
            raise IdempotencyKeyReused(details={"header": HEADER})
        return self.replayed(Stored(int(row.status_code), bytes(row.body)))


_REPLAYED = {REPLAY_HEADER: "true"}


@raises(IdempotencyKeyReused, IdempotencyKeyInUse)
async def idempotent_request(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=255,
            description="Makes a retry safe: a replay within 24 h returns the first response",
        ),
    ] = None,
) -> IdempotentRequest:
    """FastAPI dependency: the key (validated 1–255 chars) and the raw body it is bound to."""
    return IdempotentRequest(
        idempotency_key,
        request.method,
        request.url.path,
        await request.body(),
        getattr(request.state, "request_id", None),
    )


async def purge_expired(session: AsyncSession, *, now: dt.datetime | None = None) -> int:
    """Remove keys past their TTL (a periodic job); a live key is never touched."""
    stmt = text("DELETE FROM idempotency_keys WHERE created_at < :cutoff").bindparams(
        bindparam("cutoff", type_=UTCDateTime())
    )
    result = await session.execute(stmt, {"cutoff": (now or utcnow()) - TTL})
    return int(getattr(result, "rowcount", 0) or 0)
