"""One pure-ASGI middleware for the FastAPI services.

It does, in this order, what every request needs: a request ID (kept when the client's is
valid), a body-size limit enforced while the body streams in (413), a JSON-only rule for
bodies (415), the draining marks while the process shuts down, a last-resort handler that
turns any unexpected exception into the one error shape (500, never a stack trace), one JSON
access-log line, and the request metrics.
Written as raw ASGI rather than BaseHTTPMiddleware because that one costs a task per request.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

import structlog
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aihub.kit import fastlane
from aihub.kit.errors import error_body
from aihub.kit.metrics import HTTP_LATENCY, HTTP_REQUESTS
from aihub.kit.serve import DRAINING_HEADER, DrainFlag

log = structlog.get_logger("aihub.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}
_QUIET_PATHS = {"/health", "/health/ready", "/metrics"}
_DRAINING = DRAINING_HEADER.lower().encode()


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` so that FastAPI's body parsing passes it on as an HTTP error."""

    def __init__(self) -> None:
        super().__init__(413, "The request body is too large")


def pick_request_id(raw: bytes | str | None) -> str:
    """The client's ID when it is safe to echo in a header and a log line, else a new one.

    ``fullmatch``: ``$`` would also accept a trailing newline. A str (aiohttp decodes headers
    as UTF-8) may hold any character: only the ASCII ones of the pattern pass."""
    if raw:
        value = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        if _REQUEST_ID.fullmatch(value):
            return value
    return new_request_id()


def new_request_id() -> str:
    """32 hex digits, unique per process start (a random half) and per request (a counter):
    the same shape as a UUID's hex at a fraction of the cost (uuid4 reads the OS's random
    source on every call, a syscall per request on the gateway's hot path). An ID correlates
    log lines; it is no secret, so it need not be unpredictable."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        max_body_bytes: int,
        drain: DrainFlag | None = None,
        lanes: dict[tuple[str, str], fastlane.BoundLane] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes
        self.drain = drain or DrainFlag()
        # (method, path) → the fast lane that answers it in place of the app (kit/fastlane.py).
        self.lanes = lanes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = pick_request_id(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, service=self.service)
        method = scope["method"]
        status_holder = {"status": 500, "started": False, "bytes": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                if self.drain.draining:
                    # Shutting down: the client (the gateway, a load balancer) opens its next
                    # request elsewhere, and the gateway takes this instance out at once.
                    headers = [h for h in headers if h[0].lower() != b"connection"]
                    headers += [(b"connection", b"close"), (_DRAINING, b"true")]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                status_holder["bytes"] = int(status_holder["bytes"]) + len(message.get("body", b""))
            await send(message)

        early = self._precheck(scope)
        lane = self.lanes.get((method, scope["path"])) if self.lanes else None
        try:
            if early is not None:
                await self._send_error(send_wrapper, request_id, *early)
            elif lane is not None and fastlane.takes(scope):
                await fastlane.serve(lane, scope, self._limited(receive), send_wrapper)
            else:
                await self.app(scope, self._limited(receive), send_wrapper)
        except BodyTooLarge:
            if not status_holder["started"]:
                await self._send_error(
                    send_wrapper, request_id, 413, "PAYLOAD_TOO_LARGE", "The request body is too large"
                )
        except Exception:
            log.exception("unhandled_error", method=method.upper(), path=scope["path"])
            if not status_holder["started"]:
                await self._send_error(
                    send_wrapper, request_id, 500, "INTERNAL_ERROR", "Something went wrong on our side"
                )
        finally:
            self._observe(scope, status_holder, started)

    def _precheck(self, scope: Scope) -> tuple[int, str, str] | None:
        if scope["method"].encode() not in _BODY_METHODS:
            return None
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return (400, "BAD_REQUEST", "Content-Length is not a number")
            if size > self.max_body_bytes:
                return (413, "PAYLOAD_TOO_LARGE", "The request body is too large")
            if size == 0:
                return None
        elif _header(scope, b"transfer-encoding") is None:
            return None
        if not _is_json(_header(scope, b"content-type")):
            return (415, "UNSUPPORTED_MEDIA_TYPE", "The request body must be application/json")
        return None

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        return wrapped

    @staticmethod
    async def _send_error(send: Send, request_id: str, status: int, code: str, message: str) -> None:
        body = error_body(code, message, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, holder: dict[str, Any], started: float) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        status = int(holder["status"])
        HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
        HTTP_LATENCY.labels(self.service, method, route).observe(elapsed)
        if scope["path"] in _QUIET_PATHS and status < 400:
            return
        client = scope.get("client")
        log.info(
            "request",
            method=method,
            path=scope["path"],
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            bytes=holder["bytes"],
            client_ip=client[0] if client else None,
            user_id=scope.get("state", {}).get("user_id"),
        )
