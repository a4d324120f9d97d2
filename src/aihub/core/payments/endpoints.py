"""/api/payments — credit packages, Stripe checkouts, the Stripe webhook, payment history."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from aihub.core.ledger import service as ledger
from aihub.core.notifications import jobs as notification_jobs
from aihub.core.payments import schemas
from aihub.core.payments import service as payments
from aihub.core.payments.provider import require_checkout, stripe_provider
from aihub.core.rbac.deps import CurrentPrincipal, CurrentUser
from aihub.core.rbac.service import Principal
from aihub.kit.db import Tx
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.errors import Forbidden
from aihub.kit.inputs import Timestamp
from aihub.kit.pagination import Paged, PageParams, page_params

router = APIRouter(prefix="/api/payments", tags=["payments"], route_class=TxRoute)

Writer = Annotated[Principal, RequirePermission("payments:write")]
PackagePath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="a slug, e.g. `starter`")]
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "UNAUTHORIZED / INVALID_TOKEN / TOKEN_EXPIRED / TOKEN_REVOKED"},
    403: {"description": "FORBIDDEN"},
    422: {"description": "VALIDATION_ERROR"},
}


@router.get("/packages", response_model=schemas.PackageList)
async def list_packages(tx: TxDep) -> schemas.PackageList:
    """The credit packages on sale (public)."""
    return schemas.PackageList(items=list(await payments.list_packages(tx)))


@router.put(
    "/packages/{package_id}",
    response_model=schemas.PackageOut,
    responses={**_AUTH, 201: {"description": "created", "model": schemas.PackageOut}},
)
async def put_package(
    package_id: PackagePath, body: schemas.PackageIn, tx: TxDep, _: Writer, response: Response
) -> schemas.PackageOut:
    """Create (201) or replace (200) a package (`payments:write`). Checkouts already opened keep
    the terms they were sold with."""
    package, created = await payments.put_package(tx, package_id, body)
    response.status_code = 201 if created else 200
    return package


@router.delete(
    "/packages/{package_id}", status_code=204, responses={**_AUTH, 404: {"description": "PACKAGE_NOT_FOUND"}}
)
async def delete_package(package_id: PackagePath, tx: TxDep, _: Writer) -> None:
    """Remove a package (`payments:write`); its past payments are unaffected."""
    await payments.delete_package(tx, package_id)


@router.post(
    "/checkout",
    status_code=201,
    response_model=schemas.CheckoutOut,
    responses={
        **_AUTH,
        404: {"description": "PACKAGE_NOT_FOUND"},
        409: {"description": "PACKAGE_INACTIVE"},
        502: {"description": "PAYMENT_PROVIDER_ERROR"},
        503: {"description": "PAYMENTS_NOT_CONFIGURED"},
    },
)
async def create_checkout(
    body: schemas.CheckoutIn, tx: TxDep, runtime: RuntimeDep, me: CurrentUser
) -> schemas.CheckoutOut:
    """Open a Stripe Checkout Session for a package → the pending payment and the `url` to send
    the customer to. Credits are granted when Stripe reports the session paid."""
    provider = require_checkout(runtime)
    return await payments.checkout(
        tx, provider, me.user_id, me.email, body.package_id, body.success_url, body.cancel_url
    )


@router.post(
    "/webhooks/stripe",
    response_model=schemas.EventReceived,
    responses={
        400: {"description": "INVALID_SIGNATURE / INVALID_EVENT"},
        413: {"description": "PAYLOAD_TOO_LARGE"},
        404: {"description": "ACCOUNT_NOT_FOUND: the paying user has no credit account (Stripe retries)"},
    },
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def stripe_webhook(request: Request, tx: TxDep, runtime: RuntimeDep) -> schemas.EventReceived:
    """Stripe's events (public: authenticated by `Stripe-Signature`, HMAC-SHA256 over
    `timestamp.body`, 5-minute tolerance). `checkout.session.completed` (paid) grants the
    package's credits once; `charge.refunded` takes back the refunded share once; a redelivered
    event answers 200 `duplicate`; other types 200 `ignored`. A bad signature changes nothing."""
    body = await request.body()
    event = stripe_provider(runtime).verify(body, request.headers.get("stripe-signature"))
    engine = ledger.engine_of(runtime)
    if engine is not None:  # PostgreSQL: the event is one move of the ledger engine's batch

        async def handle(work_tx: Tx) -> str:
            return await payments.handle_event(work_tx, runtime, "stripe", event)

        owner = await payments.owner_of(tx, "stripe", event)
        outcome = await ledger.work(
            engine, tx, "stripe", handle, user_id=owner, policy=notification_jobs.policy(runtime)
        )
    else:
        outcome = await payments.handle_event(tx, runtime, "stripe", event)
    return schemas.EventReceived(received=True, outcome=outcome)


@router.get("", response_model=schemas.PaymentPage, responses=_AUTH)
async def list_payments(
    tx: TxDep,
    caller: CurrentPrincipal,
    page: Annotated[PageParams, Depends(page_params)],
    user_id: Annotated[uuid.UUID | None, Query(alias="userId", description="Only this user's")] = None,
    status: Annotated[schemas.Status | None, Query(description="Only payments in this status")] = None,
    package_id: Annotated[str | None, Query(alias="packageId", max_length=64)] = None,
    from_: Annotated[Timestamp | None, Query(alias="from", description="Inclusive lower bound")] = None,
    to: Annotated[Timestamp | None, Query(description="Exclusive upper bound")] = None,
) -> Paged[schemas.PaymentOut]:
    """Payments, newest first: one's own; everyone's (or `userId`'s) with `payments:read`."""
    if caller.can("payments:read"):
        target = user_id
    elif caller.user_id is None or (user_id is not None and user_id != caller.user_id):
        raise Forbidden("Reading other users' payments needs payments:read")
    else:
        target = caller.user_id
    return await payments.list_payments(
        tx, page, user_id=target, status=status, package_id=package_id, created_from=from_, created_to=to
    )


@router.get(
    "/{payment_id}",
    response_model=schemas.PaymentOut,
    responses={**_AUTH, 404: {"description": "PAYMENT_NOT_FOUND"}},
)
async def read_payment(payment_id: uuid.UUID, tx: TxDep, caller: CurrentPrincipal) -> schemas.PaymentOut:
    """One payment: one's own, or anyone's with `payments:read` (others' answer 404 otherwise)."""
    row = await payments.get_payment(tx, payment_id)
    if row.user_id != caller.user_id and not caller.can("payments:read"):
        raise payments.PaymentNotFound
    return payments.payment_out(row)
