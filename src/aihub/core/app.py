"""The core service: users, RBAC, credits, pricing, usage, quotas, reports, promos, Sora sessions, audit log."""

from __future__ import annotations

from fastapi import FastAPI

from aihub.config import Settings
from aihub.core.apikeys.endpoints import router as apikeys_router
from aihub.core.audit.endpoints import router as audit_router
from aihub.core.authorizations.endpoints import router as authorizations_router
from aihub.core.credits.endpoints import router as credits_router
from aihub.core.ledger.endpoints import credits_router as credit_moves_router
from aihub.core.ledger.endpoints import deduct_lane, event_lane
from aihub.core.ledger.endpoints import usage_router as usage_events_router
from aihub.core.notifications.endpoints import router as alerts_router
from aihub.core.notifications.jobs import carry_policy
from aihub.core.payments.endpoints import router as payments_router
from aihub.core.pricing.endpoints import router as pricing_router
from aihub.core.promos.endpoints import router as promos_router
from aihub.core.rbac.endpoints import permissions_router, roles_router
from aihub.core.reports.endpoints import analytics_router, billing_router
from aihub.core.sora.endpoints import router as sora_router
from aihub.core.usage.endpoints import quotas_router
from aihub.core.usage.endpoints import router as usage_router
from aihub.core.users.callers import authenticate
from aihub.core.users.endpoints import permission_check_router
from aihub.core.users.endpoints import router as users_router
from aihub.core.webhooks.endpoints import router as webhooks_router
from aihub.kit.app import create_service_app
from aihub.kit.deps import Access
from aihub.kit.runtime import Runtime


def create_app(settings: Settings | None = None, runtime: Runtime | None = None, *, fast_lanes: bool = True) -> FastAPI:
    """``fast_lanes``: the hottest money endpoints skip FastAPI's per-request machinery
    (kit/fastlane.py). Only where the ledger engine serves them (PostgreSQL); tests compare
    both ways of answering with ``fast_lanes=False``."""
    runtime = runtime or Runtime.build(settings or Settings())
    lanes = [] if runtime.settings.is_sqlite or not fast_lanes else [deduct_lane(runtime), event_lane(runtime)]
    return create_service_app(
        "core",
        runtime,
        # The hot money paths first: routes are matched in order (a linear scan, a measurable
        # share of a deduction's CPU); no path of these two overlaps a later router's.
        [
            credit_moves_router,
            credits_router,
            usage_events_router,
            usage_router,
            users_router,
            roles_router,
            permissions_router,
            permission_check_router,
            alerts_router,
            pricing_router,
            authorizations_router,
            quotas_router,
            billing_router,
            analytics_router,
            sora_router,
            promos_router,
            audit_router,
            payments_router,
            webhooks_router,
            apikeys_router,
        ],
        description=(
            "Users, roles and permissions, the credit ledger, pricing, usage and billing, promo codes, "
            "Sora2 sessions, audit log, payments (Stripe) and outgoing webhooks."
        ),
        access=Access(authenticate=authenticate, on_tx=carry_policy),
        lanes=lanes,
    )
