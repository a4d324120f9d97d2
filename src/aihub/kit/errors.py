"""The one error shape: ``{code, message, details?, requestId}``.

Domain errors carry their HTTP status and code; one set of handlers renders every error,
whatever raised it (our code, FastAPI's validation, Starlette's routing, or a bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from aihub.kit.jsonutil import dumps

log = structlog.get_logger("aihub.errors")

_STATUS_CODES = {
    400: ("BAD_REQUEST", "The request is malformed"),
    401: ("UNAUTHORIZED", "Authentication is required"),
    403: ("FORBIDDEN", "You are not allowed to do this"),
    404: ("NOT_FOUND", "No such resource"),
    405: ("METHOD_NOT_ALLOWED", "This method is not allowed on this resource"),
    409: ("CONFLICT", "The request conflicts with the current state"),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "The request body must be application/json"),
    422: ("VALIDATION_ERROR", "The request is invalid"),
    429: ("RATE_LIMIT_EXCEEDED", "Too many requests, try again later"),
    500: ("INTERNAL_ERROR", "Something went wrong on our side"),
    502: ("BAD_GATEWAY", "The upstream service failed"),
    503: ("SERVICE_UNAVAILABLE", "The service is unavailable"),
    504: ("GATEWAY_TIMEOUT", "The upstream service timed out"),
}


@dataclass(frozen=True)
class ErrorCode:
    """One code a client may see. ``status`` is the HTTP status it comes with; None for a code
    reported inside a successful answer (a failed background job's ``error.code``)."""

    code: str
    status: int | None
    message: str
    where: str  # the module that declared it


# Every code the system can answer with, so docs/api.md can be checked against the code
# (tests/docs/test_contract.py). AppError subclasses register themselves; codes no subclass
# carries are declared with register_code().
_REGISTRY: dict[tuple[str, int | None], ErrorCode] = {}


def register_code(code: str, status: int | None, message: str, *, where: str) -> str:
    """Declare ``code``; returns it, so a module can keep it as a constant."""
    _REGISTRY.setdefault((code, status), ErrorCode(code, status, message, where))
    return code


def registered_codes() -> list[ErrorCode]:
    """The codes declared by the modules imported so far (import every module for all of them)."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.code, e.status or 0))


for _status, (_code, _message) in _STATUS_CODES.items():
    register_code(_code, _status, _message, where=__name__)
INVALID_JSON = register_code("INVALID_JSON", 400, "The request body is not valid JSON", where=__name__)
# Any other 4xx raised by the framework (Starlette's HTTPException with a status not listed above).
HTTP_ERROR = register_code("HTTP_ERROR", None, "The request failed", where=__name__)


class AppError(Exception):
    """An error a client may see. Subclasses fix status and code; the message may vary.

    Declaring a subclass registers its code and status (see ``register_code``); pass ``code=``
    only with a code declared that way.
    """

    status_code = 400
    code = "BAD_REQUEST"
    message = "The request is malformed"
    # True when the error is itself an outcome to record: the request's unit of work commits
    # although the answer is an error (a failed login's audit row, a revoked token family).
    keep_changes = False

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.details = details
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        super().__init__(self.message)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_code(cls.code, cls.status_code, cls.message, where=cls.__module__)


class Unauthorized(AppError):
    status_code, code, message = 401, "UNAUTHORIZED", "Authentication is required"


class Forbidden(AppError):
    status_code, code, message = 403, "FORBIDDEN", "You are not allowed to do this"


class AccountSuspended(AppError):
    """A suspended user's token or key: core, auth and the gateway give the same answer."""

    status_code, code, message = 403, "ACCOUNT_SUSPENDED", "This account is suspended"


class NotFound(AppError):
    status_code, code, message = 404, "NOT_FOUND", "No such resource"


class Conflict(AppError):
    status_code, code, message = 409, "CONFLICT", "The request conflicts with the current state"


class ValidationFailed(AppError):
    status_code, code, message = 422, "VALIDATION_ERROR", "The request is invalid"


class ServiceUnavailable(AppError):
    status_code, code, message = 503, "SERVICE_UNAVAILABLE", "A dependency is unavailable"


class StoreUnavailableError(ServiceUnavailable):
    """The Redis (or memory) store behind tokens and blacklists did not answer."""

    code, message = "STORE_UNAVAILABLE", "The token store is unavailable"


def default_code(status: int) -> tuple[str, str]:
    if status in _STATUS_CODES:
        return _STATUS_CODES[status]
    return (HTTP_ERROR, "The request failed") if status < 500 else _STATUS_CODES[500]


def error_body(code: str, message: str, request_id: str | None, details: Any = None) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    body["requestId"] = request_id
    return dumps(body)


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    # X-Request-Id itself is added by the service middleware on every response.
    all_headers = dict(headers or {})
    return Response(
        error_body(code, message, request_id, details),
        status_code=status,
        media_type="application/json",
        headers=all_headers,
    )


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _field_path(loc: tuple[Any, ...]) -> str:
    # FastAPI prefixes the source ("body", "query", ...); keep it so a client knows where to look.
    # A client's key may hold a lone surrogate: escape it, or the error itself could not be sent.
    path = ".".join(str(part) for part in loc)
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def validation_details(errors: Any) -> list[dict[str, str]]:
    details = []
    for err in errors:
        details.append(
            {
                "field": _field_path(tuple(err.get("loc", ()))),
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "invalid")),
            }
        )
    return details


async def _app_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return error_response(exc.status_code, exc.code, exc.message, _request_id(request), exc.details, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    # A body that is not JSON at all is reported by FastAPI as a json_invalid validation error.
    if any(d["type"] == "json_invalid" for d in details):
        return error_response(400, INVALID_JSON, "The request body is not valid JSON", _request_id(request), details)
    return error_response(422, "VALIDATION_ERROR", "The request is invalid", _request_id(request), details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code, message = default_code(exc.status_code)
    if isinstance(exc.detail, str) and exc.status_code not in (404, 405) and exc.detail:
        message = exc.detail
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return error_response(exc.status_code, code, message, _request_id(request), headers=headers)


def allowed_methods(request: Request) -> str:
    """Every method some route answers on this path (Starlette names only the first route's)."""
    path = request.scope.get("path", "")
    table = getattr(request.app.state, "route_methods", [])
    methods = {method for regex, route_methods in table if regex.match(path) for method in route_methods}
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def answer_error(request: Request, exc: Exception) -> Response:
    """The answer the installed handlers give ``exc`` (for a fast lane, which runs outside
    Starlette's exception middleware; see kit/fastlane.py)."""
    if isinstance(exc, AppError):
        return await _app_error(request, exc)
    if isinstance(exc, RequestValidationError):
        return await _validation_error(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return await _http_error(request, exc)
    raise exc
