"""/api/keys — a user's API keys (admins: anyone's)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from aihub.core.apikeys import schemas
from aihub.core.apikeys import service as keys
from aihub.core.rbac.deps import CurrentUser
from aihub.kit.deps import RuntimeDep, TxDep, TxRoute
from aihub.kit.pagination import Paged, PageParams, page_params

router = APIRouter(prefix="/api/keys", tags=["api-keys"], route_class=TxRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "UNAUTHORIZED / INVALID_TOKEN / INVALID_API_KEY / KEY_EXPIRED"},
    403: {"description": "FORBIDDEN (another user's keys without admin) / KEY_EXCEEDS_OWNER / KEY_IP_NOT_ALLOWED"},
    404: {"description": "KEY_NOT_FOUND / USER_NOT_FOUND"},
    422: {"description": "VALIDATION_ERROR"},
}


@router.post("", status_code=201, response_model=schemas.KeyCreated, responses=_ERRORS)
async def create_key(body: schemas.KeyIn, tx: TxDep, me: CurrentUser) -> schemas.KeyCreated:
    """Issue a key for oneself (an admin: for `userId`). The `key` is in this answer only.

    A caller authenticated by a key gets 403 `KEY_EXCEEDS_OWNER` for a key with more than its
    own (another model, address, higher rate, larger budget, later expiry, or none of them)."""
    return await keys.create(tx, me, body)


@router.get("", response_model=schemas.KeyPage, responses=_ERRORS)
async def list_keys(
    tx: TxDep,
    me: CurrentUser,
    page: Annotated[PageParams, Depends(page_params)],
    user_id: Annotated[uuid.UUID | None, Query(alias="userId", description="Admins: another user's keys")] = None,
) -> Paged[schemas.KeyOut]:
    """One's own keys, newest first (never the key itself)."""
    return await keys.search(tx, me, page, user_id)


@router.get("/current", response_model=schemas.KeyIdentity, responses=_ERRORS)
async def current_key(me: CurrentUser) -> schemas.KeyIdentity:
    """The presenting key's identity and restrictions (the gateway resolves keys with it);
    403 for a caller that is not authenticated by a key."""
    return keys.identity(me)


@router.get("/{key_id}", response_model=schemas.KeyOut, responses=_ERRORS)
async def read_key(key_id: uuid.UUID, tx: TxDep, me: CurrentUser) -> schemas.KeyOut:
    return await keys.read(tx, me, key_id)


@router.patch("/{key_id}", response_model=schemas.KeyOut, responses=_ERRORS)
async def update_key(key_id: uuid.UUID, body: schemas.KeyPatch, tx: TxDep, me: CurrentUser) -> schemas.KeyOut:
    """Change a key's name or restrictions; a field sent as null lifts that restriction."""
    return await keys.update(tx, me, key_id, body)


@router.delete("/{key_id}", status_code=204, responses=_ERRORS)
async def revoke_key(key_id: uuid.UUID, tx: TxDep, runtime: RuntimeDep, me: CurrentUser) -> Response:
    """Revoke a key: refused by core at once and by every gateway within a second."""
    await keys.revoke(tx, runtime.store, me, key_id)
    return Response(status_code=204)
