"""The auth service: register, login, refresh, logout, service tokens, JWKS."""

from __future__ import annotations

from fastapi import FastAPI

from aihub.auth.endpoints import router
from aihub.auth.identity.endpoints import router as identity_router
from aihub.config import Settings
from aihub.core.users.callers import authenticate
from aihub.kit.app import create_service_app
from aihub.kit.deps import Access
from aihub.kit.runtime import Runtime


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime.build(settings or Settings())
    return create_service_app(
        "auth",
        runtime,
        [router, identity_router],
        description="Registration, login, token refresh and logout, service tokens, JWKS; email verification, "
        "password reset, Google sign-in.",
        access=Access(authenticate=authenticate),
        waits_for_jwks=False,
    )
