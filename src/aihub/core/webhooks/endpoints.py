"""/api/webhooks — outgoing webhook endpoints (`webhooks:write` to change, `webhooks:read` to list)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from aihub.core.rbac.service import Principal
from aihub.core.webhooks import jobs as _jobs  # noqa: F401  (registers the delivery job)
from aihub.core.webhooks import schemas
from aihub.core.webhooks import service as webhooks
from aihub.kit.deps import RequirePermission, RuntimeDep, TxDep, TxRoute
from aihub.kit.pagination import Paged, PageParams, page_params
from aihub.models import WebhookEndpoint

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], route_class=TxRoute)

Reader = Annotated[Principal, RequirePermission("webhooks:read")]
Writer = Annotated[Principal, RequirePermission("webhooks:write")]
Page = Annotated[PageParams, Depends(page_params)]
_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "UNAUTHORIZED / INVALID_TOKEN / TOKEN_EXPIRED / TOKEN_REVOKED"},
    403: {"description": "FORBIDDEN: the permission is missing"},
    422: {"description": "VALIDATION_ERROR"},
}
_ONE = {**_AUTH, 404: {"description": "WEBHOOK_NOT_FOUND"}}
_WRITE = {**_ONE, 422: {"description": "VALIDATION_ERROR / INVALID_WEBHOOK_URL"}}
_CREATE = {**_AUTH, 422: _WRITE[422]}


@router.post("", status_code=201, response_model=schemas.EndpointCreated, responses=_CREATE)
async def create_webhook(body: schemas.EndpointIn, tx: TxDep, runtime: RuntimeDep, _: Writer) -> WebhookEndpoint:
    """Register an endpoint for some events → its `secret` (`whsec_<base64>`), shown only here.

    Deliveries follow Standard Webhooks: headers `webhook-id`, `webhook-timestamp` and
    `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the secret's
    base64-decoded bytes; body `{type, timestamp, data}`. Only http(s) URLs; private, loopback
    and link-local addresses only where `AIHUB_WEBHOOK_ALLOW_PRIVATE_ADDRESSES` allows them.
    """
    return await webhooks.create_endpoint(tx, runtime.settings, body)


@router.get("", response_model=schemas.EndpointPage, responses=_AUTH)
async def list_webhooks(tx: TxDep, _: Reader, page: Page) -> Paged[WebhookEndpoint]:
    """Every endpoint, newest first (never their secrets)."""
    return await webhooks.list_endpoints(tx, page)


@router.get("/{webhook_id}", response_model=schemas.EndpointOut, responses=_ONE)
async def read_webhook(webhook_id: uuid.UUID, tx: TxDep, _: Reader) -> WebhookEndpoint:
    """One endpoint (without its secret)."""
    return await webhooks.get_endpoint(tx, webhook_id)


@router.patch("/{webhook_id}", response_model=schemas.EndpointOut, responses=_WRITE)
async def update_webhook(
    webhook_id: uuid.UUID, body: schemas.EndpointPatch, tx: TxDep, runtime: RuntimeDep, _: Writer
) -> WebhookEndpoint:
    """Change the URL, the events, the description, or pause it (`active: false`)."""
    return await webhooks.update_endpoint(tx, runtime.settings, webhook_id, body)


@router.delete("/{webhook_id}", status_code=204, responses=_ONE)
async def delete_webhook(webhook_id: uuid.UUID, tx: TxDep, _: Writer) -> None:
    """Remove the endpoint with its deliveries."""
    await webhooks.delete_endpoint(tx, webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=schemas.DeliveryPage, responses=_ONE)
async def list_deliveries(webhook_id: uuid.UUID, tx: TxDep, _: Reader, page: Page) -> Paged[schemas.DeliveryOut]:
    """The endpoint's messages, newest first, each with every attempt made (status, error, duration)."""
    return await webhooks.list_deliveries(tx, webhook_id, page)


@router.post("/{webhook_id}/test", status_code=202, response_model=schemas.TestOut, responses=_ONE)
async def send_test_webhook(webhook_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, _: Writer) -> schemas.TestOut:
    """Queue a `webhook.test` event to this endpoint (sent after commit, retried like any other)."""
    return await webhooks.send_test(tx, runtime, webhook_id)
