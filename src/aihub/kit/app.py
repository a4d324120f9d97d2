"""Assembles a FastAPI service: middleware, error shape, health, readiness, metrics, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from aihub import __version__
from aihub.kit.deps import Access, commits_at_the_edge, install
from aihub.kit.errors import install_error_handlers
from aihub.kit.fastlane import Lane, bind
from aihub.kit.inputs import refuse_bad_text
from aihub.kit.jsonutil import dumps
from aihub.kit.metrics import metrics_endpoint
from aihub.kit.middleware import ServiceMiddleware
from aihub.kit.openapi import document_errors
from aihub.kit.runtime import Runtime
from aihub.kit.serve import drain_flag


def refuse_uncommitted(routers: Sequence[APIRouter]) -> None:
    uncommitted = [
        f"{sorted(route.methods or ())} {route.path}"
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and not commits_at_the_edge(route)
    ]
    if uncommitted:
        raise TypeError(f"routes open a unit of work without committing it (use TxRoute): {uncommitted}")


async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


async def ready(request: Request) -> Response:
    """Readiness: the database answers, and Redis when one is configured; 503 while shutting down."""
    runtime: Runtime = request.app.state.runtime
    database = "ok" if await runtime.check_database() else "down"
    if runtime.store.kind == "redis":
        redis = "ok" if await runtime.store.ping() else "down"
    else:
        redis = "memory"
    checks = {"database": database, "redis": redis}
    jwks = runtime.codec.jwks
    if jwks is not None and request.app.state.waits_for_jwks:
        checks["jwks"] = jwks.state  # "loading" until the first key set arrived: not ready yet
    draining = drain_flag(request.app).draining
    down = database == "down" or redis == "down" or checks.get("jwks") == "loading" or draining
    body: dict[str, object] = {"status": "down" if down else "ok", "checks": checks}
    if draining:
        body["draining"] = True  # shutting down: load balancers take it out of rotation
    return Response(dumps(body), status_code=503 if down else 200, media_type="application/json")


def create_service_app(
    name: str,
    runtime: Runtime,
    routers: Sequence[APIRouter],
    *,
    access: Access,
    description: str,
    waits_for_jwks: bool = True,
    lanes: Sequence[Lane] = (),
) -> FastAPI:
    """``access`` says how the routes' callers are authenticated (kit/deps.py). Every route
    that opens a unit of work must commit it at the edge (a ``TxRoute``): one that does not is
    refused here, at start-up, rather than silently rolling its writes back per request.
    ``waits_for_jwks=False`` is for auth: it publishes the key set and verifies with its own
    keys, so its readiness must not wait on a JWKS URL that may lead back to itself. ``lanes``
    answer their routes' requests without FastAPI's machinery (kit/fastlane.py)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime.codec.jwks is not None and waits_for_jwks:
            runtime.codec.jwks.start()  # in the background: readiness waits for it, start does not
        if not app.state.prepared:
            await runtime.prepare()
        yield
        if app.state.owns_runtime:
            await runtime.close()

    app = FastAPI(
        title=f"aihub {name}",
        version=__version__,
        description=description,
        lifespan=lifespan,
        # A slash redirect's Location is built from the Host the caller sent, which behind the
        # gateway is this instance's internal address: a wrong path is a 404, never a 307.
        redirect_slashes=False,
        # Before every other dependency of every route: no NUL or lone surrogate gets in.
        dependencies=[Depends(refuse_bad_text)],
    )
    refuse_uncommitted(routers)
    app.state.runtime = runtime
    install(app, access)
    app.state.settings = runtime.settings
    # The all-in-one process shares one runtime between services, prepares it and closes it once.
    app.state.prepared = False
    app.state.owns_runtime = True
    app.state.waits_for_jwks = waits_for_jwks
    install_error_handlers(app)
    app.add_middleware(
        ServiceMiddleware,
        service=name,
        max_body_bytes=runtime.settings.max_body_bytes,
        drain=drain_flag(app),
        lanes=bind(lanes, routers),
    )
    health_router = APIRouter(tags=["health"])
    health_router.add_api_route("/health", health, methods=["GET"])
    health_router.add_api_route(
        "/health/ready",
        ready,
        methods=["GET"],
        response_model=None,
        responses={503: {"description": "Not ready: a dependency is down, or the service is draining"}},
    )
    health_router.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    every = [health_router, *routers]
    for router in every:
        document_errors(router.routes)
    # The methods each path answers, for the Allow header of a 405 (see kit.errors).
    app.state.route_methods = [
        (route.path_regex, frozenset(route.methods or ()))
        for router in every
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    for router in every:
        app.include_router(router)
    return app
