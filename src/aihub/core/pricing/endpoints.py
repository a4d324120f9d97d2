"""/api/pricing — what each provider's model costs, in credits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from aihub.core.pricing import schemas
from aihub.core.pricing import service as pricing
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission, TxDep, TxRoute
from aihub.kit.openapi import errors
from aihub.kit.pagination import PageParams, SortKey, page_of_sorted, short_list_params
from aihub.models import ModelPrice

router = APIRouter(prefix="/api/pricing", tags=["pricing"], route_class=TxRoute)

Provider = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="e.g. openai")]
Model = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$", description="e.g. gpt-4o")]
Writer = Annotated[Principal, RequirePermission("pricing:write")]
ShortPage = Annotated[PageParams, Depends(short_list_params)]


def _page(items: list[ModelPrice], cursor: str | None) -> schemas.PriceList:
    return schemas.PriceList(items=[schemas.PriceOut.model_validate(p) for p in items], next_cursor=cursor)


def _by_model(price: ModelPrice) -> SortKey:
    return (price.provider, price.model)


def _newest_first(price: ModelPrice) -> SortKey:
    return (-price.effective_from.timestamp(), str(price.id))


@router.get("", response_model=schemas.PriceList)
async def list_prices(
    tx: TxDep, page: ShortPage, provider: Annotated[str | None, Query(max_length=64)] = None
) -> schemas.PriceList:
    """Current prices of every model (public), by provider and model. Credits: 1 credit = USD 0.001."""
    items, cursor = page_of_sorted(await pricing.list_current(tx, provider), page, _by_model)
    return _page(items, cursor)


@router.get(
    "/{provider}/{model}",
    response_model=schemas.PriceOut,
    responses=errors(pricing.UnknownModel, pricing.PriceNotFound),
)
async def read_price(provider: Provider, model: Model, tx: TxDep) -> ModelPrice:
    """The current price of one model (public)."""
    return await pricing.require_current(tx, provider, model)


@router.get("/{provider}/{model}/history", response_model=schemas.PriceList, responses=errors(pricing.PriceNotFound))
async def price_history(provider: Provider, model: Model, tx: TxDep, page: ShortPage) -> schemas.PriceList:
    """Every price the model has had, newest first (public)."""
    items, cursor = page_of_sorted(await pricing.history(tx, provider, model), page, _newest_first)
    return _page(items, cursor)


@router.put(
    "/{provider}/{model}",
    response_model=schemas.PriceOut,
    responses={
        201: {"model": schemas.PriceOut, "description": "The model had no price: created"},
        **errors(pricing.PriceChangedConcurrently),
    },
)
async def put_price(
    provider: Provider, model: Model, body: schemas.PriceBody, tx: TxDep, actor: Writer, response: Response
) -> ModelPrice:
    """Set a model's price. The old price is kept as history; usage already charged is unchanged.

    Answers 201 when the model had no price, 200 when an existing price was replaced.
    """
    price, created = await pricing.set_price(tx, actor.id, provider, model, body)
    response.status_code = 201 if created else 200
    return price


@router.delete("/{provider}/{model}", status_code=204, responses=errors(pricing.PriceNotFound))
async def delete_price(provider: Provider, model: Model, tx: TxDep, _: Writer) -> Response:
    """Stop pricing a model (usage reports for it then get 422 UNKNOWN_MODEL); history stays."""
    await pricing.remove_price(tx, provider, model)
    return Response(status_code=204)
