"""Security headers on every response, and CORS from settings.

Credentials are allowed, so the allowed origin is always echoed, never ``*`` (a browser would
refuse it, and a wildcard with credentials would hand any site the user's session).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from multidict import CIMultiDict

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


def add_security(headers: CIMultiDict[str], *, generated: bool) -> None:
    # One C-level update instead of a Python loop of assignments: this runs on every response.
    headers.update(_SECURITY_GENERATED if generated else _SECURITY)


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

    def preflight_headers(self, origin: str, requested_headers: str | None) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": requested_headers or DEFAULT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
