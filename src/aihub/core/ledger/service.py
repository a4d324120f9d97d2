"""Money moves through the process's ledger engine (PostgreSQL), as HTTP answers.

On the embedded SQLite (one writer anyway) there is no engine: the endpoints keep applying
their move in the request's own transaction (``credits.service``), with the same outcomes.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.ledger.engine import Claim, LedgerEngine, Move, Outcome
from aihub.kit.db import Tx
from aihub.kit.idempotency import REPLAY_HEADER, IdempotentRequest, Stored, fingerprint, render, replay_body
from aihub.kit.runtime import Runtime

ENGINE_KEY = "ledger.engine"


def engine_of(runtime: Runtime) -> LedgerEngine | None:
    """The process's engine (created on first use, stopped with the runtime); None on SQLite."""
    if runtime.settings.is_sqlite:
        return None
    found = runtime.extras.get(ENGINE_KEY)
    if found is None:
        found = LedgerEngine(runtime.engine)
        runtime.extras[ENGINE_KEY] = found
        runtime.on_close(found.close)
    assert isinstance(found, LedgerEngine)
    return found


def claim_of(idem: IdempotentRequest, principal: str) -> Claim | None:
    if idem.key is None:
        return None
    return Claim(principal, idem.key, fingerprint(principal, idem.method, idem.path, idem.body))


async def move(
    engine: LedgerEngine,
    tx: Tx,
    idem: IdempotentRequest,
    principal: str,
    model: type[BaseModel],
    *,
    user_id: uuid.UUID,
    amount: int,
    reason: str,
    metadata: dict[str, Any] | None = None,
    related_id: uuid.UUID | None = None,
    policy: credits.Policy = credits.NO_ALERTS,
    status_code: int = 201,
) -> Response:
    """Apply one signed move through the engine and answer as the request path would have."""
    outcome = await engine.submit(
        Move(
            user_id=user_id,
            amount=amount,
            reason=reason,
            render=lambda view: render(model, view),
            status_code=status_code,
            metadata=metadata,
            related_id=related_id,
            actor=tx.info.get("actor", audit.SYSTEM),
            request_id=tx.request_id,
            ip=tx.ip,
            claim=claim_of(idem, principal),
            policy=policy,
        )
    )
    return answer(outcome, model, idem.request_id)


def answer(outcome: Outcome, model: type[BaseModel], request_id: str | None) -> Response:
    if outcome.error is not None:
        raise outcome.error
    if outcome.replayed:
        assert outcome.body is not None
        body = replay_body(Stored(outcome.status_code, outcome.body), request_id)
        return _json(outcome.status_code, body, {REPLAY_HEADER: "true"})
    if outcome.body is not None:
        return _json(outcome.status_code, outcome.body)
    return _json(outcome.status_code, render(model, outcome.view))


def _json(status_code: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)
