"""Fast lanes: the hottest endpoints answered without FastAPI's per-request machinery.

Profiling a deduction under load showed most of core's CPU in the framework around the work
(Starlette's middleware stack, route matching, FastAPI's dependency solver and its Request
bookkeeping), not in the work. A lane takes one (method, path) straight from
``ServiceMiddleware`` (which still gives it the request ID, the body limit, the JSON-only
rule, the access log and the metrics) and performs the same steps as the declared FastAPI
route, in FastAPI's order, with FastAPI's own field objects for validation:

    JSON body (400 INVALID_JSON) → the app-wide dependencies → the route's dependencies
    (errors raised at once) → parameter and body validation (one 422 naming every field) →
    the endpoint function itself → the response model → the one error shape.

The route stays declared: it is the OpenAPI schema, and it answers whatever a lane does not
take (a query string, an unusual content type, another method, the SQLite deployment). A
lane is chosen per process when the app is built; nothing a client sends selects one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant, request_body_to_args, request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, serialize_response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic_core import PydanticUndefined
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from aihub.kit.errors import AppError, answer_error

LaneHandler = Callable[[Request], Awaitable[Response]]
Undefined: Any = PydanticUndefined  # FastAPI's "no body was sent" (not the same as a JSON null)


@dataclass(frozen=True, slots=True)
class Lane:
    """``make`` builds the handler once the declared route is known (its fields and model)."""

    method: str
    path: str
    make: Callable[[APIRoute], LaneHandler]


@dataclass(frozen=True, slots=True)
class BoundLane:
    route: APIRoute
    handler: LaneHandler


def bind(lanes: Sequence[Lane], routers: Sequence[APIRouter]) -> dict[tuple[str, str], BoundLane]:
    """Each lane joined to its declared route (a lane without one is a programming error)."""
    bound: dict[tuple[str, str], BoundLane] = {}
    for lane in lanes:
        route = next(
            (
                r
                for router in routers
                for r in router.routes
                if isinstance(r, APIRoute) and r.path == lane.path and lane.method in (r.methods or ())
            ),
            None,
        )
        if route is None:
            raise LookupError(f"no route {lane.method} {lane.path} for its fast lane")
        # The lane serialises as FastAPI's default response class does, and validates one
        # plain (not embedded) body model: anything else it would not reproduce.
        assert isinstance(route.response_class, DefaultPlaceholder), route.path
        assert route.response_field is not None, route.path
        assert len(route.dependant.body_params) <= 1, route.path
        bound[(lane.method, lane.path)] = BoundLane(route, lane.make(route))
    return bound


def takes(scope: Scope) -> bool:
    """Whether a lane reproduces this request exactly: no query string (a lane validates none)
    and a body that is plain ``application/json`` or absent. Anything else takes the route."""
    if scope.get("query_string"):
        return False
    for key, value in scope["headers"]:
        if key == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return True


async def serve(bound: BoundLane, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one request through its lane; errors take the app's own handlers' shape."""
    scope["route"] = bound.route  # the access log's and the metrics' route label
    request = Request(scope, receive)
    try:
        response = await bound.handler(request)
    except (AppError, StarletteHTTPException, RequestValidationError) as exc:
        response = await answer_error(request, exc)
    await response(scope, receive, send)


async def json_body(request: Request) -> Any:
    """The parsed body, or ``Undefined`` when there is none: what FastAPI's request handler
    does before any dependency runs, with its errors (json_invalid → 400 INVALID_JSON; a body
    that cannot be read or decoded → 400 BAD_REQUEST)."""
    try:
        body = await request.body()
        if not body:
            return Undefined
        return json.loads(body)  # as Starlette's Request.json, so positions and messages match
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except StarletteHTTPException:
        raise  # the body limit's 413
    except Exception as exc:
        raise StarletteHTTPException(status_code=400, detail="There was an error parsing the body") from exc


async def validate_body(route: APIRoute, value: Any) -> tuple[Any, list[Any]]:
    """The route's body model from ``value`` with FastAPI's own field (same errors, same locs)."""
    values, errors = await request_body_to_args(
        body_fields=route.dependant.body_params, received_body=value, embed_body_fields=False
    )
    return (None if errors else next(iter(values.values()))), errors


_DEPENDANTS: dict[Callable[..., Any], Dependant] = {}


async def call_dependency(request: Request, call: Callable[..., Awaitable[Any]]) -> tuple[Any, list[Any]]:
    """A dependency that takes the request and header parameters (such as the
    ``Idempotency-Key`` one): its headers validated as FastAPI does, then the call; with
    errors the call is skipped and they join the request's 422, as in FastAPI."""
    dependant = _DEPENDANTS.get(call)
    if dependant is None:
        dependant = _DEPENDANTS[call] = get_dependant(path="", call=call)
        assert not (dependant.dependencies or dependant.query_params or dependant.body_params), call
    values, errors = request_params_to_args(dependant.header_params, request.headers)
    if errors:
        return None, errors
    if dependant.request_param_name:
        values[dependant.request_param_name] = request
    return await call(**values), []


def sub_response() -> Response:
    """The ``Response`` an endpoint may set headers and a status on (FastAPI's own kind)."""
    response = Response()
    del response.headers["content-length"]
    response.status_code = None  # type: ignore[assignment]  # "not set", as FastAPI marks it
    return response


async def respond(route: APIRoute, result: Any, sub: Response) -> Response:
    """The endpoint's result as FastAPI answers it: a Response as is, anything else through
    the response model (Pydantic's JSON, FastAPI's path for its default response class), with
    the status and headers set on ``sub``."""
    if isinstance(result, Response):
        return result
    content = await serialize_response(
        field=route.response_field,
        response_content=result,
        include=route.response_model_include,
        exclude=route.response_model_exclude,
        by_alias=route.response_model_by_alias,
        exclude_unset=route.response_model_exclude_unset,
        exclude_defaults=route.response_model_exclude_defaults,
        exclude_none=route.response_model_exclude_none,
        is_coroutine=True,
        dump_json=True,
    )
    response = Response(content, media_type="application/json", status_code=sub.status_code or route.status_code or 200)
    if not is_body_allowed_for_status_code(response.status_code):
        response.body = b""
    response.headers.raw.extend(sub.headers.raw)
    return response
