"""/api/usage and /api/quotas — metering of LLM and video calls, and the limits on them."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from aihub.core.rbac import service as rbac
from aihub.core.rbac.deps import CurrentPrincipal, CurrentUser
from aihub.core.rbac.service import MissingPermission, Principal
from aihub.core.usage import schemas
from aihub.core.usage import service as usage
from aihub.core.users import service as users
from aihub.kit.deps import RequirePermission, TxDep, TxRoute
from aihub.kit.inputs import Timestamp
from aihub.kit.openapi import errors
from aihub.kit.pagination import Paged, PageParams, page_params

router = APIRouter(prefix="/api/usage", tags=["usage"], route_class=TxRoute)
quotas_router = APIRouter(prefix="/api/quotas", tags=["quotas"], route_class=TxRoute)

From = Annotated[Timestamp | None, Query(alias="from", description="Inclusive, RFC 3339")]
To = Annotated[Timestamp | None, Query(alias="to", description="Exclusive, RFC 3339")]
Scope = Annotated[str, Path(max_length=80, description="role:<name>, user:<uuid> or key:<uuid>")]


def _subject(caller: Principal, user_id: uuid.UUID | None) -> uuid.UUID | None:
    """Whose usage a query covers: one's own, or anyone's (or everyone's) with usage:read."""
    if user_id is not None and str(user_id) == caller.id:
        return user_id
    if caller.can("usage:read"):
        return user_id
    if caller.kind != "user" or user_id is not None:
        raise MissingPermission("usage:read")
    return caller.user_id


@router.get("", response_model=schemas.UsagePage)
async def list_usage(
    tx: TxDep,
    caller: CurrentPrincipal,
    page: Annotated[PageParams, Depends(page_params)],
    provider: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
    from_: From = None,
    to: To = None,
    user_id: Annotated[uuid.UUID | None, Query(alias="userId")] = None,
) -> Paged[schemas.UsageEventOut]:
    """Usage events, newest first: one's own, or another user's (or all) with `usage:read`."""
    subject = _subject(caller, user_id)
    return await usage.list_events(tx, page, user_id=subject, provider=provider, model=model, start=from_, end=to)


@router.get("/summary", response_model=schemas.SummaryOut)
async def usage_summary(
    tx: TxDep,
    caller: CurrentPrincipal,
    group_by: Annotated[Literal["provider", "model", "day", "day_model"], Query(alias="groupBy")] = "provider",
    from_: From = None,
    to: To = None,
    user_id: Annotated[uuid.UUID | None, Query(alias="userId")] = None,
) -> schemas.SummaryOut:
    """Requests, tokens and credits grouped by provider, model (`provider/model`), UTC day, or
    both (`day_model`: keys `YYYY-MM-DD/provider/model`)."""
    subject = _subject(caller, user_id)
    return await usage.summary(tx, group_by, user_id=subject, start=from_, end=to)


@router.get("/quota", response_model=schemas.MyQuotaOut)
async def my_quota(tx: TxDep, me: CurrentUser) -> schemas.MyQuotaOut:
    """Every limit on the caller (own, each role's, and the calling key's), what is used and
    left in its current window, and when it resets."""
    return await usage.my_quota(tx, me.user_id, me.api_key.id if me.api_key is not None else None)


@quotas_router.get(
    "/{scope}",
    response_model=schemas.QuotaOut,
    responses=errors(usage.QuotaNotFound, usage.InvalidScope),
)
async def read_quota(
    scope: Scope, tx: TxDep, _: Annotated[Principal, RequirePermission("quotas:read")]
) -> schemas.QuotaOut:
    return await usage.get_quota(tx, scope)


@quotas_router.put(
    "/{scope}",
    response_model=schemas.QuotaOut,
    responses={
        201: {"model": schemas.QuotaOut, "description": "Created"},
        **errors(usage.InvalidScope, rbac.RoleNotFound, users.UserNotFound),
    },
)
async def put_quota(
    scope: Scope,
    body: schemas.QuotaIn,
    tx: TxDep,
    _: Annotated[Principal, RequirePermission("quotas:write")],
    response: Response,
) -> schemas.QuotaOut:
    """Set the limits of `role:<name>`, `user:<uuid>` or `key:<uuid>`: `{limits: [...]}`, or one
    limit in the single-limit form. Every limit on a call applies at once (a user's narrows,
    never widens, their roles'), against usage since the window began.

    201 when created, 200 when replaced. An omitted measure is no limit on it.
    """
    quota, created = await usage.put_quota(tx, scope, body.as_limits())
    response.status_code = 201 if created else 200
    return quota


@quotas_router.delete("/{scope}", status_code=204, responses=errors(usage.QuotaNotFound, usage.InvalidScope))
async def delete_quota(scope: Scope, tx: TxDep, _: Annotated[Principal, RequirePermission("quotas:write")]) -> Response:
    await usage.delete_quota(tx, scope)
    return Response(status_code=204)
