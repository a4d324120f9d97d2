"""The request plumbing every service's endpoints use: the unit of work, the caller, permission checks.

What a caller *is* (a user, a key, a service token) and what opening a unit of work carries
(core's low-balance policy) belong to the domains; the app that puts the domains together hands
them in as an :class:`Access` (``create_service_app(access=…)``), so this module knows no domain
and every domain can import it: the arrows point down.

Identity comes only from a verified credential. Headers such as ``X-User-Id`` (set by the
gateway) are never trusted: every service verifies the caller itself (defence in depth).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from aihub.kit import fastlane
from aihub.kit.apikeys import InvalidApiKey, KeyExpired, KeyIpNotAllowed, MalformedAuthorization, bearer
from aihub.kit.db import Tx
from aihub.kit.errors import AccountSuspended, AppError, Forbidden, StoreUnavailableError, Unauthorized
from aihub.kit.fastlane import Lane, LaneHandler
from aihub.kit.idempotency import IdempotentRequest, idempotent_request
from aihub.kit.inputs import refuse_bad_text
from aihub.kit.jwt import InvalidToken, TokenExpired, TokenRevoked
from aihub.kit.openapi import raises
from aihub.kit.routing import ApiRoute
from aihub.kit.runtime import Runtime

P = TypeVar("P")

# Every dependency here is `async def` on purpose: FastAPI runs plain `def` dependencies in a
# worker thread, and that hop cost ~0.4 ms per dependency per request in measurements.


class Caller(Protocol):
    """What the plumbing needs of a caller: whether it holds a permission."""

    def require(self, permission: str) -> None: ...


class Authenticator(Protocol):
    """Who is calling, from the request's credential, in the request's unit of work (refusing
    with one of :data:`AUTHENTICATION_ERRORS`)."""

    async def __call__(self, request: Request, runtime: Runtime, tx: Tx) -> Any: ...


@dataclass(frozen=True, slots=True)
class Access:
    """What a service's app hands the plumbing: how a caller is authenticated and what a new
    unit of work carries (``on_tx``: core's low-balance policy, so that every debit of the
    request alerts)."""

    authenticate: Authenticator
    on_tx: Callable[[Runtime, Tx], None] | None = None


# The refusals an authenticator may answer with: documented on every route that needs a caller.
AUTHENTICATION_ERRORS = (
    Unauthorized,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    AccountSuspended,
    StoreUnavailableError,
    InvalidApiKey,
    KeyExpired,
    KeyIpNotAllowed,
)


async def _nobody(request: Request, runtime: Runtime, tx: Tx) -> Any:
    raise Unauthorized("This service takes no authenticated callers")


# For an app none of whose routes needs a caller (kit's own tests, a bare service).
NO_CALLERS = Access(authenticate=_nobody)


def install(app: FastAPI, access: Access) -> None:
    app.state.access = access


def access_of(request: Request) -> Access:
    access: Access | None = getattr(request.app.state, "access", None)
    if access is None:
        # A route that needs a caller in an app built without one: a programming error.
        raise RuntimeError("this app was created without an Access (create_service_app(access=…))")
    return access


class TxRoute(ApiRoute):
    """Commits the request's unit of work once the endpoint has produced its response.

    Commit happens before the response leaves, so a failed commit becomes an error response
    rather than a success the client was told about; anything else rolls back, except an
    ``AppError`` with ``keep_changes`` (the error is the outcome to record).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_commit(request: Request) -> Response:
            return await committed(request, handler)

        return with_commit


async def committed(request: Request, handler: Callable[[Request], Awaitable[Response]]) -> Response:
    """``handler``'s response with the request's unit of work (if it opened one) committed or
    rolled back as :class:`TxRoute` says; fast lanes (kit/fastlane.py ``lane``) run through it too."""
    try:
        response = await handler(request)
        tx: Tx | None = getattr(request.state, "tx", None)
        if tx is not None and response.status_code < 400:
            await tx.commit()
        return response
    except AppError as exc:
        tx = getattr(request.state, "tx", None)
        if exc.keep_changes and tx is not None:
            await tx.commit()
        raise
    finally:
        tx = getattr(request.state, "tx", None)
        if tx is not None:
            await tx.close()


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_tx(request: Request, runtime: RuntimeDep) -> Tx:
    existing: Tx | None = getattr(request.state, "tx", None)
    if existing is not None:
        return existing
    tx = runtime.tx(
        request_id=getattr(request.state, "request_id", None),
        ip=request.client.host if request.client else None,
    )
    on_tx = access_of(request).on_tx
    if on_tx is not None:
        on_tx(runtime, tx)
    request.state.tx = tx
    return tx


TxDep = Annotated[Tx, Depends(get_tx)]


def bearer_token(request: Request) -> str:
    """The request's bearer token: 401 ``UNAUTHORIZED`` without one, 401 ``INVALID_TOKEN`` for
    a malformed header (the gateway answers that one ``UNAUTHORIZED``; both are pinned)."""
    header = request.headers.get("authorization")
    if not header:  # absent or empty: no credential at all
        raise Unauthorized("A bearer token is required")
    try:
        token = bearer(header)
    except MalformedAuthorization:
        raise InvalidToken("The Authorization header must be 'Bearer <token>'") from None
    assert token is not None  # a header was there
    return token


@raises(*AUTHENTICATION_ERRORS)
async def current_principal(request: Request, runtime: RuntimeDep, tx: TxDep) -> Any:
    """The caller, as the app's :class:`Access` authenticates it (its type is the domain's:
    ``CurrentPrincipal`` in core/rbac/deps.py names it)."""
    return await access_of(request).authenticate(request, runtime, tx)


def RequirePermission(permission: str) -> Any:
    async def check(principal: Annotated[Caller, Depends(current_principal)]) -> Caller:
        principal.require(permission)
        return principal

    check.__name__ = f"require_{permission.replace(':', '_').replace('-', '_')}"
    return Depends(raises(Forbidden)(check))


def commits_at_the_edge(route: APIRoute) -> bool:
    """Whether a route that opens a unit of work also commits it: one using :data:`TxDep`
    (directly or through a dependency) must be a :class:`TxRoute`, or its writes would be
    rolled back when the request ends."""
    return isinstance(route, TxRoute) or not _uses(route.dependant, get_tx)


def _uses(dependant: Any, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _uses(sub, call) for sub in dependant.dependencies)


# ---------------------------------------------------------------------- fast lanes


@dataclass(frozen=True, slots=True)
class Solved(Generic[P]):
    """What a fast lane's route asks for, solved as FastAPI solves the route's dependencies."""

    request: Request
    runtime: Runtime
    tx: Tx
    principal: P
    body: Any
    idem: IdempotentRequest | None
    response: Response  # the endpoint's ``Response`` parameter (headers, status)


def lane(
    runtime: Runtime,
    method: str,
    path: str,
    *,
    permission: str,
    idempotent: bool,
    call: Callable[[Solved[P]], Awaitable[Any]],
) -> Lane:
    """A fast lane (kit/fastlane.py) for a route whose dependencies are the unit of work,
    ``RequirePermission(permission)`` and (``idempotent``) ``idempotent_request``, plus one
    body model: the same steps in FastAPI's order, the same functions where they exist
    (``refuse_bad_text``, ``get_tx``, ``current_principal``, ``idempotent_request``, the
    endpoint through ``call``), and :func:`committed` around them as :class:`TxRoute`."""

    def make(route: APIRoute) -> LaneHandler:
        async def solve(request: Request) -> Response:
            raw = await fastlane.json_body(request)  # before any dependency, as FastAPI reads it
            await refuse_bad_text(request)  # the app-wide dependency, first
            tx = await get_tx(request, runtime)
            principal = await current_principal(request, runtime, tx)
            principal.require(permission)
            errors: list[Any] = []
            idem: IdempotentRequest | None = None
            if idempotent:
                idem, idem_errors = await fastlane.call_dependency(request, idempotent_request)
                errors += idem_errors
            body, body_errors = await fastlane.validate_body(route, raw)
            errors += body_errors
            if errors:
                raise RequestValidationError(errors, body=None if raw is fastlane.Undefined else raw)
            sub = fastlane.sub_response()
            result = await call(Solved(request, runtime, tx, principal, body, idem, sub))
            return await fastlane.respond(route, result, sub)

        async def handler(request: Request) -> Response:
            return await committed(request, solve)

        return handler

    return Lane(method, path, make)
