"""Model prices and the arithmetic of a charge.

A charge is ``ceil(input/1000 * inputPer1k + output/1000 * outputPer1k + perRequest +
seconds * perSecond)`` credits, computed in exact decimals: rounding happens once, upwards,
so a provider's cost is never under-recovered and the same call always costs the same.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError

from aihub.core.audit import service as audit
from aihub.core.credits.schemas import MAX_AMOUNT
from aihub.core.pricing import repository as repo
from aihub.core.pricing.schemas import PriceBody, PriceOut
from aihub.kit.db import Tx, utcnow
from aihub.kit.errors import AppError, Conflict, NotFound
from aihub.models import ModelPrice

_THOUSAND = Decimal(1000)


class PriceNotFound(NotFound):
    code, message = "PRICE_NOT_FOUND", "No price is set for this provider and model"


class UnknownModel(AppError):
    status_code, code, message = 422, "UNKNOWN_MODEL", "No price is set for this provider and model"


class CostOutOfRange(AppError):
    status_code, code = 422, "COST_OUT_OF_RANGE"
    message = f"The priced cost exceeds the largest single charge ({MAX_AMOUNT} credits)"


class PriceChangedConcurrently(Conflict):
    code, message = "CONCURRENT_UPDATE", "The price was changed by another request; retry"


class Rates(Protocol):
    """What a charge is computed from: a ``ModelPrice`` row, or the ledger writer's own read of it."""

    @property
    def input_per_1k(self) -> Decimal: ...
    @property
    def output_per_1k(self) -> Decimal: ...
    @property
    def per_request(self) -> Decimal: ...
    @property
    def per_second(self) -> Decimal: ...


def cost(
    price: Rates,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    duration_seconds: Decimal | int | float = 0,
) -> Decimal:
    seconds = Decimal(str(duration_seconds))
    return (
        Decimal(input_tokens) / _THOUSAND * price.input_per_1k
        + Decimal(output_tokens) / _THOUSAND * price.output_per_1k
        + price.per_request
        + seconds * price.per_second
    )


def credits_for(price: Rates, **usage: Any) -> int:
    """Whole credits to charge: the exact cost rounded up (a zero cost stays zero)."""
    return bounded_charge(cost(price, **usage))


def bounded_charge(exact: Decimal) -> int:
    """The one place a cost becomes credits: rounded up, and never more than one debit may be.

    The input bounds (prices, tokens, seconds) keep the exact cost far inside BIGINT; a charge
    above ``MAX_AMOUNT`` is refused like a deduct of that size would be, so it never reaches
    the database (a price set before the bounds existed cannot overflow it either).
    """
    charge = math.ceil(exact)
    if charge > MAX_AMOUNT:
        raise CostOutOfRange(details={"credits": str(charge), "max": MAX_AMOUNT})
    return charge


def _audited(price: ModelPrice) -> audit.Fields:
    """The price as its audit entries keep it: the response's fields, snake_case."""
    return PriceOut.model_validate(price).model_dump()


async def require_current(tx: Tx, provider: str, model: str) -> ModelPrice:
    """The price in force now, or 422 UNKNOWN_MODEL (what a usage report about it must get)."""
    price = await repo.current(tx.session, provider, model)
    if price is None:
        raise UnknownModel(details={"provider": provider, "model": model})
    return price


async def list_current(tx: Tx, provider: str | None) -> list[ModelPrice]:
    return list(await repo.list_current(tx.session, provider))


async def history(tx: Tx, provider: str, model: str) -> list[ModelPrice]:
    rows = list(await repo.history(tx.session, provider, model))
    if not rows:
        raise PriceNotFound
    return rows


async def set_price(tx: Tx, actor_id: str, provider: str, model: str, values: PriceBody) -> tuple[ModelPrice, bool]:
    """Close the current price (kept as history) and open the new one. Returns (price, created)."""
    before = await repo.current(tx.session, provider, model)
    now = utcnow()
    await repo.close_current(tx.session, provider, model, now)
    price = ModelPrice(provider=provider, model=model, effective_from=now, created_by=actor_id, **values.model_dump())
    tx.session.add(price)
    try:
        await tx.session.flush()
    except IntegrityError as exc:  # another PUT for this model committed between our two statements
        raise PriceChangedConcurrently from exc
    audit.record(
        tx,
        "pricing.set",
        "price",
        f"{provider}/{model}",
        before=_audited(before) if before else None,
        after=_audited(price),
    )
    return price, before is None


async def remove_price(tx: Tx, provider: str, model: str) -> None:
    before = await repo.current(tx.session, provider, model)
    if before is None or not await repo.close_current(tx.session, provider, model, utcnow()):
        raise PriceNotFound
    audit.record(tx, "pricing.delete", "price", f"{provider}/{model}", before=_audited(before))
