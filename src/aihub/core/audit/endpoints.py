"""/api/audit-logs — read and verify the hash-chained audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from aihub.core.audit import repository as repo
from aihub.core.audit import schemas
from aihub.core.audit import service as audit
from aihub.kit.deps import Caller, RequirePermission, TxDep, TxRoute
from aihub.kit.inputs import Timestamp
from aihub.kit.pagination import Paged, PageParams, page_params, paged
from aihub.models import AuditLog

router = APIRouter(prefix="/api/audit-logs", tags=["audit"], route_class=TxRoute)
# The reader is only checked (audit sits below rbac, so the principal stays the plumbing's Caller).
Reader = Annotated[Caller, RequirePermission("audit:read")]


@router.get("", response_model=schemas.AuditPage)
async def list_audit_logs(
    tx: TxDep,
    _: Reader,
    page: Annotated[PageParams, Depends(page_params)],
    actor_id: Annotated[str | None, Query(alias="actorId", max_length=64)] = None,
    entity_type: Annotated[str | None, Query(alias="entityType", max_length=32)] = None,
    entity_id: Annotated[str | None, Query(alias="entityId", max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[Timestamp | None, Query(alias="from", description="Inclusive, RFC 3339")] = None,
    to: Annotated[Timestamp | None, Query(description="Exclusive, RFC 3339")] = None,
) -> Paged[AuditLog]:
    """Audit rows, newest first; `from` is inclusive, `to` exclusive."""
    stmt = repo.search(
        page,
        actor_id=actor_id,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        created_from=from_,
        created_to=to,
    )
    return paged(await repo.fetch(tx.session, stmt), page, lambda r: (r.created_at, r.id))


@router.get("/verify", response_model=schemas.VerifyOut)
async def verify_audit_logs(tx: TxDep, _: Reader) -> audit.VerifyResult:
    """Recompute every chain: an edited, inserted or deleted row makes `valid` false."""
    return await audit.verify(tx)
