"""Makes each operation's OpenAPI ``responses`` list every status code it can answer.

Three sources, merged by :func:`document_errors` once all routes are included:

* what the kit itself answers for any route: 422 for bad input (the text rule applies to any
  query parameter, declared or not), 400/413/415 on body methods (the service middleware's
  body checks), 404 for a path parameter that names no resource;
* what a dependency answers, declared once next to it with :func:`raises` (authentication:
  401/403/503, a permission check: 403, ``Idempotency-Key``: 409/422, …);
* what the endpoint's own service raises, declared on the route with
  ``responses=errors(SomeError, OtherError)``.

Every error response is documented with the one error shape (:class:`ErrorOut`) instead of
FastAPI's ``HTTPValidationError``, which this service never sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.utils import create_model_field
from pydantic import Field
from starlette.routing import BaseRoute

from aihub.kit.errors import AppError, default_code
from aihub.kit.schemas import ApiModel

F = TypeVar("F", bound=Callable[..., Any])
ErrorSpec = type[AppError] | tuple[int, str]


class ErrorOut(ApiModel):
    """The one error shape of every service."""

    code: str = Field(description="UPPER_SNAKE error code")
    message: str
    details: Any = Field(default=None, description="Optional: which fields were wrong, limits, …")
    request_id: str | None = Field(description="The X-Request-Id of the request")


_RAISES: dict[Callable[..., Any], dict[int, set[str]]] = {}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _codes(specs: tuple[ErrorSpec, ...]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for spec in specs:
        status, code = (spec.status_code, spec.code) if isinstance(spec, type) else spec
        found.setdefault(status, set()).add(code)
    return found


def raises(*specs: ErrorSpec) -> Callable[[F], F]:
    """Declare the errors a dependency can answer; every route using it documents them."""

    def register(func: F) -> F:
        for status, codes in _codes(specs).items():
            _RAISES.setdefault(func, {}).setdefault(status, set()).update(codes)
        return func

    return register


def errors(*specs: ErrorSpec) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: its own service's errors (classes or ``(status, CODE)``)."""
    return {status: _response(codes) for status, codes in _codes(specs).items()}


def _response(codes: set[str]) -> dict[str, Any]:
    return {"model": ErrorOut, "description": " / ".join(sorted(codes))}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _kit_errors(route: APIRoute) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {422: {"VALIDATION_ERROR"}}
    if (route.methods or set()) & _BODY_METHODS:
        found[400] = {"BAD_REQUEST", "INVALID_JSON"}
        found[413] = {"PAYLOAD_TOO_LARGE"}
        found[415] = {"UNSUPPORTED_MEDIA_TYPE"}
    if route.dependant.path_params:
        found[404] = {default_code(404)[0]}
    for call in _calls(route.dependant):
        for status, codes in _RAISES.get(call, {}).items():
            found.setdefault(status, set()).update(codes)
    return found


def document_errors(routes: Sequence[BaseRoute]) -> None:
    """Complete the ``responses`` of every API route (before the routers are included)."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        responses = dict(route.responses)
        for status, codes in _kit_errors(route).items():
            existing = responses.get(status)
            if existing is None:
                responses[status] = _response(codes)
                continue
            description = str(existing.get("description", ""))
            missing = sorted(code for code in codes if code not in description)
            responses[status] = {**existing, "description": " / ".join([description, *missing]).strip(" /")}
        for key, spec in list(responses.items()):
            if int(key) >= 400 and "model" not in spec and "content" not in spec:
                responses[key] = {**spec, "model": ErrorOut}
        route.responses = responses
        # FastAPI builds the response models' fields when the route is created: rebuild them.
        route.response_fields = {
            status: create_model_field(
                name=f"Response_{status}_{route.unique_id}", type_=spec["model"], mode="serialization"
            )
            for status, spec in responses.items()
            if spec.get("model") is not None
        }
