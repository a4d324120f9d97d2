"""/api/promo-codes — campaigns (admin) and redemption (any signed-in user)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from aihub.core.ledger import service as ledger
from aihub.core.ledger.engine import Work
from aihub.core.promos import schemas
from aihub.core.promos import service as promos
from aihub.core.rbac.deps import CurrentUser
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.idempotency import IdempotentRequest, idempotent_request
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params
from aihub.models import PromoCode

router = APIRouter(prefix="/api/promo-codes", tags=["promo-codes"], route_class=TxRoute)

Reader = Annotated[Principal, RequirePermission("promo:read")]
Writer = Annotated[Principal, RequirePermission("promo:write")]
Idem = Annotated[IdempotentRequest, Depends(idempotent_request)]
Page = Annotated[PageParams, Depends(page_params)]
_REDEEM_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "PROMO_NOT_FOUND"},
    409: {"description": "PROMO_INACTIVE / PROMO_NOT_STARTED / PROMO_EXHAUSTED / PROMO_ALREADY_REDEEMED"},
    410: {"description": "PROMO_EXPIRED"},
    429: {"description": "PROMO_RATE_LIMITED (with Retry-After)"},
}


@router.post(
    "",
    response_model=schemas.PromoOut,
    status_code=201,
    responses=errors(promos.PromoCodeTaken, promos.PromoCodeCollision),
)
async def create_code(body: schemas.PromoIn, tx: TxDep, _: Writer) -> schemas.PromoOut:
    """Create one code (`promo:write`): the given `code` (stored upper case; 409
    `PROMO_CODE_TAKEN` when it exists) or a generated one such as `K7QM-2XWP-9HTC-RD4B`."""
    return await promos.create(tx, body)


@router.post(
    "/batch", response_model=schemas.PromoBatchOut, status_code=201, responses=errors(promos.PromoCodeCollision)
)
async def create_batch(body: schemas.PromoBatchIn, tx: TxDep, _: Writer) -> schemas.PromoBatchOut:
    """Generate `count` (≤ 1000) unique codes with the same terms, each `PREFIX-XXXX-XXXX-XXXX-XXXX`
    when a prefix is given (`promo:write`)."""
    return await promos.create_batch(tx, body)


@router.post("/redeem", response_model=schemas.RedeemOut, responses=_REDEEM_ERRORS)
async def redeem_code(
    body: schemas.RedeemIn, tx: TxDep, me: CurrentUser, runtime: RuntimeDep, idem: Idem
) -> schemas.RedeemOut | Response:
    """Redeem a code for oneself (user token): its credits are granted at once → 200
    `{code, credits, balance, transactionId}`. Case and surrounding whitespace do not matter.

    404 `PROMO_NOT_FOUND`; 409 `PROMO_INACTIVE`, `PROMO_NOT_STARTED` (before `startsAt`),
    `PROMO_EXHAUSTED` (`maxRedemptions` reached) or `PROMO_ALREADY_REDEEMED` (`perUserLimit`
    reached); 410 `PROMO_EXPIRED`. After too many failed attempts within the window, 429
    `PROMO_RATE_LIMITED` with `Retry-After`: per user every refusal counts (default 10 per 15
    minutes); per client address only codes that do not exist count (default 100, room for a NAT).
    Accepts `Idempotency-Key`: a replay returns the first result without granting again.
    """
    user_id = me.user_id
    engine = ledger.engine_of(runtime)
    if engine is not None:  # PostgreSQL: the redemption is one move of the ledger engine's batch
        replayed = await idem.replay(tx, me.id)  # a replay answers before the limits, as below
        if replayed is not None:
            return replayed

        async def through_engine() -> schemas.RedeemOut | Response:
            made = await ledger.move(
                engine,
                tx,
                idem,
                me.id,
                schemas.RedeemOut,
                user_id=user_id,
                amount=0,
                reason="promo",
                status_code=200,
                act=Work("promo", lambda work_tx: promos.redeem(work_tx, user_id, body.code)),
            )
            assert isinstance(made, schemas.RedeemOut | Response)  # the redemption, or a replay
            return made

        return await promos.redeem_limited(tx, runtime.store, runtime.settings, user_id, through_engine)
    return await idem.respond(
        tx,
        me.id,
        200,
        schemas.RedeemOut,
        lambda: promos.redeem_limited(
            tx, runtime.store, runtime.settings, user_id, lambda: promos.redeem(tx, user_id, body.code)
        ),
    )


@router.get("", response_model=schemas.PromoPage)
async def list_codes(
    tx: TxDep,
    _: Reader,
    page: Page,
    active: Annotated[bool | None, Query(description="Only active (true) or inactive (false) codes")] = None,
    code: Annotated[str | None, Query(max_length=100, description="Exact code, case-insensitive")] = None,
) -> Paged[PromoCode]:
    """Promo codes, newest first (`promo:read`), with `redeemedCount` and `creditsGranted`."""
    return await promos.list_codes(tx, page, active=active, code=code)


@router.get("/{promo_id}", response_model=schemas.PromoOut, responses=errors(promos.PromoNotFound))
async def read_code(promo_id: uuid.UUID, tx: TxDep, _: Reader) -> PromoCode:
    return await promos.get(tx, promo_id)


@router.patch(
    "/{promo_id}",
    response_model=schemas.PromoOut,
    responses=errors(promos.PromoNotFound, promos.PromoMaxBelowRedeemed),
)
async def update_code(promo_id: uuid.UUID, body: schemas.PromoPatch, tx: TxDep, _: Writer) -> schemas.PromoOut:
    """Deactivate or reactivate (`active`), change `startsAt`/`expiresAt`, `maxRedemptions`
    (`null`: unlimited; never below `redeemedCount`: 409 `PROMO_MAX_BELOW_REDEEMED`) or the
    description (`promo:write`). Only the fields sent change."""
    return await promos.update(tx, promo_id, body)


@router.get("/{promo_id}/redemptions", response_model=schemas.RedemptionPage, responses=errors(promos.PromoNotFound))
async def list_redemptions(promo_id: uuid.UUID, tx: TxDep, _: Reader, page: Page) -> Paged[schemas.RedemptionOut]:
    """Who redeemed the code and when, newest first (`promo:read`)."""
    return await promos.list_redemptions(tx, promo_id, page)
