"""What every response gets (request ID, security headers, CORS, rate-limit headers), and the
CORS preflight.

Credentials are allowed, so the allowed origin is always echoed, never ``*`` (a browser would
refuse it, and a wildcard with credentials would hand any site the user's session).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiohttp import web
from multidict import CIMultiDict

from aihub.gateway.context import CTX
from aihub.kit.errors import Forbidden
from aihub.kit.middleware import pick_request_id
from aihub.kit.serve import DrainFlag

log = structlog.get_logger("aihub.gateway.headers")

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Cross-Origin-Resource-Policy", "same-site"),
)
# Gateway-generated bodies are JSON errors and health documents: nothing may load or frame them.
GENERATED_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
EXPOSED = "X-Request-Id, RateLimit-Policy, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After"
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS, HEAD"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-Id, X-Session-Token"


_SECURITY = CIMultiDict(SECURITY_HEADERS)
_SECURITY_GENERATED = CIMultiDict([*SECURITY_HEADERS, ("Content-Security-Policy", GENERATED_CSP)])


def add_security(headers: CIMultiDict[str], *, proxied: bool) -> None:
    """``proxied``: the upstream's response, whose page policy is its own. The gateway's own
    answers get ``GENERATED_CSP`` unless they carry a policy of their own (docs, console)."""
    # One C-level update instead of a Python loop of assignments: this runs on every response.
    if proxied or "Content-Security-Policy" in headers:
        headers.update(_SECURITY)
    else:
        headers.update(_SECURITY_GENERATED)


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        allowed = set()
        for origin in origins:
            if origin == "*":
                log.warning("cors_wildcard_ignored", reason="credentials are allowed; list origins instead")
                continue
            allowed.add(origin.rstrip("/"))
        self.origins = frozenset(allowed)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and origin in self.origins

    def add(self, headers: CIMultiDict[str], origin: str | None) -> None:
        """On actual (non-preflight) responses."""
        if not self.origins:
            return
        headers.add("Vary", "Origin")
        if origin is not None and origin in self.origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Allow-Credentials"] = "true"
            headers["Access-Control-Expose-Headers"] = EXPOSED

    def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or not self.allowed(origin):
            raise Forbidden("This origin is not allowed")
        headers = self.preflight_headers(origin, request.headers.get("Access-Control-Request-Headers"))
        return web.Response(status=204, headers=headers)

    def preflight_headers(self, origin: str, requested_headers: str | None) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": requested_headers or DEFAULT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }


class ResponseHeaders:
    """``on_response_prepare``: runs for every response, relayed, streamed or the gateway's own,
    just before its headers go out."""

    def __init__(self, cors: Cors, drain: DrainFlag) -> None:
        self.cors = cors
        self.drain = drain

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        ctx = request.get(CTX)
        headers = response.headers
        headers["X-Request-Id"] = ctx.request_id if ctx else pick_request_id(None)
        headers["Server"] = "aihub"  # not aiohttp's default, which names the Python and aiohttp versions
        add_security(headers, proxied=ctx is not None and ctx.proxied)
        if self.cors.origins:
            self.cors.add(headers, request.headers.get("Origin"))
        if ctx is not None and ctx.limit_headers:
            headers.update(ctx.limit_headers)
        if self.drain.draining:
            response.force_close()  # shutting down: the client's next request opens elsewhere
