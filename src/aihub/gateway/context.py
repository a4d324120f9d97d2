"""What one request carries through the gateway, and how the gateway answers in its own name.

Every room of the gateway (identity, limits, health, docs, console, the block-list API) reads
and writes the request's ``Ctx``; ``on_response_prepare`` (headers.py) and the access log
(accesslog.py) read it once the answer is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aihub.gateway.proxy import Forwarded
from aihub.kit.errors import error_body


@dataclass(slots=True)
class Ctx:
    request_id: str
    client_ip: str
    started: float
    route: str = "unmatched"
    # The response is the upstream's (relayed, streamed or a WebSocket): it keeps its own
    # Content-Security-Policy. Anything else is the gateway's, and gets its CSP (headers.py).
    proxied: bool = False
    user_id: str | None = None
    api_key_id: str | None = None  # the access log names a key by its id, never the key
    limit_headers: dict[str, str] | None = None
    hop: Forwarded = field(default_factory=Forwarded)


CTX = web.RequestKey("aihub_gateway_ctx", Ctx)


def json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def error_response(
    ctx: Ctx,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    ctx.proxied = False  # an error is the gateway's own, even one that cuts a forwarded request short
    return json_response(error_body(code, message, ctx.request_id, details), status, headers)


def method_not_allowed(ctx: Ctx) -> web.Response:
    return error_response(ctx, 405, "METHOD_NOT_ALLOWED", "This method is not allowed on this resource")
