"""/api/sora — the Sora2 video tool's backend (a Custom GPT calls these with X-Session-Token).

Sessions are created, listed and revoked by the logged-in user (Bearer token); everything
else authenticates with the session token alone.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response
from fastapi.params import Body

from aihub.core.audit import service as audit
from aihub.core.credits import service as credits
from aihub.core.ledger import service as ledger
from aihub.core.pricing import service as pricing
from aihub.core.rbac.deps import CurrentUser
from aihub.core.sora import schemas
from aihub.core.sora import service as sora
from aihub.kit.deps import RuntimeDep, TxDep, TxRoute
from aihub.kit.idempotency import IdempotentRequest, idempotent_request
from aihub.kit.openapi import errors, raises
from aihub.kit.pagination import Paged, PageParams, SortKey, page_of_sorted, short_list_params
from aihub.models import SoraGeneration, SoraSession, User

router = APIRouter(prefix="/api/sora", tags=["sora"], route_class=TxRoute)
Idem = Annotated[IdempotentRequest, Depends(idempotent_request)]


@raises(sora.InvalidSession)
async def video_session(
    tx: TxDep,
    x_session_token: Annotated[
        str | None, Header(alias="X-Session-Token", description="VERIFIED-… from POST /api/sora/sessions")
    ] = None,
) -> tuple[SoraSession, User]:
    row, user = await sora.authenticate(tx, x_session_token)
    audit.set_actor(tx, audit.Actor(id=str(user.id), type="user"))
    return row, user


VideoSession = Annotated[tuple[SoraSession, User], Depends(video_session)]


@router.post("/sessions", response_model=schemas.SessionCreated, status_code=201)
async def create_session(tx: TxDep, me: CurrentUser) -> schemas.SessionCreated:
    """Create a session token for the video tool (valid 7 days). The token is shown only here."""
    return await sora.create_session(tx, me.user_id)


@router.get("/sessions", response_model=schemas.SessionList)
async def list_sessions(
    tx: TxDep, me: CurrentUser, page: Annotated[PageParams, Depends(short_list_params)]
) -> Paged[SoraSession]:
    """One's sessions, newest first (ids and dates, never the token)."""
    return Paged(*page_of_sorted(await sora.list_sessions(tx, me.user_id), page, _newest_first))


def _newest_first(session: SoraSession) -> SortKey:
    return (-session.created_at.timestamp(), str(session.id))


@router.delete("/sessions/{session_id}", status_code=204, responses=errors(sora.SessionNotFound))
async def revoke_session(session_id: uuid.UUID, tx: TxDep, me: CurrentUser) -> Response:
    """Revoke one of one's sessions: the tool's next call gets 401 INVALID_SESSION."""
    await sora.revoke_session(tx, me.user_id, session_id)
    return Response(status_code=204)


@router.get("/session", response_model=schemas.SessionInfo, responses=errors(credits.AccountNotFound))
async def read_session(tx: TxDep, session: VideoSession) -> schemas.SessionInfo:
    """Who the session belongs to, when it expires, and the user's balance."""
    return await sora.session_info(tx, *session)


@router.post(
    "/credits/check",
    response_model=schemas.CheckOut,
    responses=errors(pricing.UnknownModel, pricing.CostOutOfRange, credits.AccountNotFound),
)
async def check_credits(body: schemas.CheckIn, tx: TxDep, session: VideoSession) -> schemas.CheckOut:
    """Price a video (from the `openai/sora2` price; 480p ×0.5, 720p ×1, 1080p ×2) and say if it fits."""
    return await sora.check(tx, session[1], body.duration_seconds, body.resolution)


@router.post(
    "/generations",
    response_model=schemas.GenerationOut,
    status_code=201,
    responses=errors(
        credits.InsufficientCredits, credits.AccountNotFound, pricing.UnknownModel, pricing.CostOutOfRange
    ),
)
async def start_generation(
    body: schemas.GenerationIn, tx: TxDep, runtime: RuntimeDep, session: VideoSession, idem: Idem
) -> schemas.GenerationOut | Response:
    """Hold the video's price (not spent yet) → `{id, holdId, cost, status: pending}`.

    402 `INSUFFICIENT_CREDITS` and no hold when the user cannot pay. Send an `Idempotency-Key`:
    a retry then returns the same generation instead of holding twice.
    """
    row, user = session
    ttl = runtime.settings.sora_hold_ttl_seconds
    return await ledger.worked(  # PostgreSQL: the hold and the generation are one move of a batch
        runtime,
        tx,
        idem,
        f"sora:{row.id}",
        schemas.GenerationOut,
        "sora",
        lambda on: sora.start(on, row, user, body.duration_seconds, body.resolution, body.prompt, ttl),
        user_id=user.id,
        policy=tx.info.get(credits.POLICY, credits.NO_ALERTS),
    )


@router.get(
    "/generations/{generation_id}",
    response_model=schemas.GenerationOut,
    responses=errors(sora.GenerationNotFound),
)
async def read_generation(generation_id: uuid.UUID, tx: TxDep, session: VideoSession) -> SoraGeneration:
    return await sora.read_generation(tx, session[1], generation_id)


@router.post(
    "/generations/{generation_id}/complete",
    response_model=schemas.Resolved,
    responses=errors(sora.GenerationNotFound, sora.GenerationResolved, credits.HoldNotActive, pricing.UnknownModel),
)
async def complete_generation(
    generation_id: uuid.UUID,
    tx: TxDep,
    runtime: RuntimeDep,
    session: VideoSession,
    body: Annotated[schemas.CompleteIn | None, Body()] = None,
) -> schemas.Resolved:
    """Charge for the video made: at most what was held; a shorter video costs less.

    Resolves once: a second complete or fail gets 409 `GENERATION_NOT_PENDING`.
    """
    actual = body.actual_seconds if body else None
    user = session[1]
    # PostgreSQL: the capture and the generation's rows are one move of the engine's batch.
    return await ledger.run_work(
        runtime, tx, "sora", lambda on: sora.complete(on, user, generation_id, actual), user_id=user.id
    )


@router.post(
    "/generations/{generation_id}/fail",
    response_model=schemas.Resolved,
    responses=errors(sora.GenerationNotFound, sora.GenerationResolved, credits.HoldNotActive),
)
async def fail_generation(
    generation_id: uuid.UUID,
    tx: TxDep,
    runtime: RuntimeDep,
    session: VideoSession,
    body: Annotated[schemas.FailIn | None, Body()] = None,
) -> schemas.Resolved:
    """The video was not made: release the whole hold (`charged: 0`). Resolves once."""
    reason, user = (body.reason if body else None), session[1]
    return await ledger.run_work(  # PostgreSQL: the release and the generation's rows in one move
        runtime, tx, "sora", lambda on: sora.fail(on, user, generation_id, reason), user_id=user.id
    )
