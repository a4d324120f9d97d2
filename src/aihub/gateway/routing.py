"""The route table: which upstream group serves a path, and under which rules.

Defaults follow ARCHITECTURE.md; ``AIHUB_GATEWAY_ROUTES`` names a YAML or TOML file that
replaces them. Matching is longest prefix on whole path segments, so ``/api/users`` never
catches ``/api/usersx``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from aihub.config import Settings

AuthMode = Literal["public", "jwt", "optional"]
_AUTH_MODES = ("public", "jwt", "optional")
LimitKey = Literal["identity", "ip", "session"]


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    upstream: str
    strip: str = ""  # the leading part removed before proxying ("" keeps the path)
    auth: AuthMode = "jwt"
    public_methods: frozenset[str] = frozenset()  # methods that need no token on a jwt route
    max_body_bytes: int = 1_048_576
    timeout: float = 60.0
    websocket: bool = False
    rate_limit: int | None = None  # a stricter limit with its own bucket; None: the role's limit
    limit_key: LimitKey = "identity"
    name: str = field(default="", compare=False)

    def label(self) -> str:
        return self.name or self.prefix

    def upstream_path(self, path: str) -> str:
        if self.strip and path.startswith(self.strip):
            rest = path[len(self.strip) :]
            return rest if rest.startswith("/") else "/" + rest
        return path

    def auth_for(self, method: str) -> AuthMode:
        return "public" if method in self.public_methods else self.auth


# Our own services answer readiness (503 while draining or when their database is down); any
# other upstream is only assumed to answer liveness.
_READINESS = {"auth": "/health/ready", "core": "/health/ready"}


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    upstreams: dict[str, list[str]]
    # The path the active health check probes, per upstream group (missing: /health).
    health_paths: dict[str, str] = field(default_factory=lambda: dict(_READINESS))
    # aihub's own services: readiness is degraded without them. Any other group (mcp, or one a
    # route file adds) is an optional upstream that readiness reports but does not judge by.
    own: frozenset[str] = frozenset(_READINESS)
    _short: tuple[Route, ...] = field(default=(), init=False, repr=False, compare=False)
    _by_head: dict[str, tuple[Route, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Routes by their first two segments ("/api/auth"): a path can only match routes that
        # share its first two segments, or whose prefix is shorter than two. Built once, so a
        # request scans a handful of candidates instead of the whole table.
        short = tuple(r for r in self.routes if _head(r.prefix) is None)
        heads: dict[str, list[Route]] = {}
        for route in self.routes:
            head = _head(route.prefix)
            if head is not None:
                heads.setdefault(head, []).append(route)
        object.__setattr__(self, "_short", short)
        object.__setattr__(self, "_by_head", {head: (*routes, *short) for head, routes in heads.items()})
        for route in self.routes:
            if route.upstream not in self.upstreams:
                raise ValueError(f"route {route.prefix} names unknown upstream group {route.upstream!r}")
        for group, path in self.health_paths.items():
            if not path.startswith("/"):
                raise ValueError(f"health path of upstream group {group!r} must start with '/'")

    def match(self, path: str) -> Route | None:
        # Routes are kept longest first, so the first hit is the longest matching prefix.
        head = _head(path)
        candidates = self._short if head is None else self._by_head.get(head, self._short)
        for route in candidates:
            prefix = route.prefix
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return route
        return None


def _head(path: str) -> str | None:
    """The first two segments, "/api/auth" of "/api/auth/login"; None for fewer than two."""
    second = path.find("/", 1)
    if second < 0:
        return None
    third = path.find("/", second + 1)
    head = path if third < 0 else path[:third]
    return head if len(head) > second + 1 else None


def _sorted(routes: list[Route]) -> tuple[Route, ...]:
    return tuple(sorted(routes, key=lambda r: len(r.prefix), reverse=True))


_CORE_PREFIXES = (
    "/api/users",
    "/api/credits",
    "/api/roles",
    "/api/permissions",
    "/api/usage",
    "/api/pricing",
    "/api/quotas",
    "/api/analytics",
    "/api/billing",
    "/api/promo-codes",
    "/api/audit-logs",
    "/api/payments",
    "/api/webhooks",
    "/api/keys",
)


def default_table(settings: Settings) -> RouteTable:
    body, timeout = settings.max_body_bytes, settings.gateway_timeout_seconds
    auth = "/api/auth"
    routes = [
        Route(auth, "auth", strip=auth, max_body_bytes=body, timeout=timeout),
        # Public auth endpoints, each with its own stricter limit keyed by client address.
        Route(
            f"{auth}/login",
            "auth",
            strip=auth,
            auth="public",
            max_body_bytes=body,
            timeout=timeout,
            rate_limit=settings.rate_limit_login,
            limit_key="ip",
        ),
        Route(
            f"{auth}/register",
            "auth",
            strip=auth,
            auth="public",
            max_body_bytes=body,
            timeout=timeout,
            rate_limit=settings.rate_limit_register,
            limit_key="ip",
        ),
        Route(f"{auth}/refresh", "auth", strip=auth, auth="public", max_body_bytes=body, timeout=timeout),
        # Email verification, password reset, Google sign-in: public, limited per client address;
        # the two that act for a signed-in user keep the token check.
        *(
            Route(
                f"{auth}{path}",
                "auth",
                strip=auth,
                auth="public",
                max_body_bytes=body,
                timeout=timeout,
                rate_limit=settings.rate_limit_identity,
                limit_key="ip",
            )
            for path in ("/verify-email", "/password-reset", "/oauth")
        ),
        *(
            Route(f"{auth}{path}", "auth", strip=auth, max_body_bytes=body, timeout=timeout)
            for path in ("/verify-email/request", "/oauth/google/link")
        ),
        Route(f"{auth}/.well-known", "auth", strip=auth, auth="public", max_body_bytes=body, timeout=timeout),
        Route(
            "/api/promo-codes/redeem",
            "core",
            max_body_bytes=body,
            timeout=timeout,
            rate_limit=settings.rate_limit_promo_redeem,
        ),
        # Core checks the Sora session token itself; a user token, when sent, is still verified.
        Route("/api/sora", "core", auth="optional", max_body_bytes=body, timeout=timeout, limit_key="session"),
        # Stripe authenticates its events with their signature (core verifies it over the exact
        # bytes, which the proxy passes through untouched), not with a token; its own bucket
        # without a limit, since Stripe delivers bursts from a handful of addresses.
        Route(
            "/api/payments/webhooks/stripe",
            "core",
            auth="public",
            max_body_bytes=body,
            timeout=timeout,
            rate_limit=0,
            limit_key="ip",
        ),
        Route(
            "/api/payments/packages",
            "core",
            public_methods=frozenset({"GET", "HEAD"}),
            max_body_bytes=body,
            timeout=timeout,
        ),
        Route("/api/mcp", "mcp", max_body_bytes=body, timeout=timeout, websocket=True),
        Route("/api/ws", "mcp", max_body_bytes=body, timeout=timeout, websocket=True),
    ]
    for prefix in _CORE_PREFIXES:
        public = frozenset({"GET", "HEAD"}) if prefix == "/api/pricing" else frozenset()
        routes.append(Route(prefix, "core", public_methods=public, max_body_bytes=body, timeout=timeout))
    upstreams = {name: settings.upstream_urls(name) for name in ("auth", "core", "mcp")}
    return RouteTable(_sorted(routes), upstreams)


def _route_from(raw: dict[str, Any], settings: Settings) -> Route:
    prefix = str(raw["prefix"]).rstrip("/") or "/"
    strip_raw = raw.get("strip", False)
    strip = prefix if strip_raw is True else (str(strip_raw) if strip_raw else "")
    auth = str(raw.get("auth", "jwt"))
    if auth not in _AUTH_MODES:
        raise ValueError(f"route {prefix}: auth must be one of {', '.join(_AUTH_MODES)}")
    limit_key = str(raw.get("limit_key", "identity"))
    if limit_key not in ("identity", "ip", "session"):
        raise ValueError(f"route {prefix}: limit_key must be identity, ip or session")
    rate_limit = raw.get("rate_limit")
    return Route(
        prefix=prefix,
        upstream=str(raw["upstream"]),
        strip=strip,
        auth=auth,  # type: ignore[arg-type]  # checked against _AUTH_MODES above
        public_methods=frozenset(str(m).upper() for m in raw.get("public_methods", [])),
        max_body_bytes=int(raw.get("max_body_bytes", settings.max_body_bytes)),
        timeout=float(raw.get("timeout", settings.gateway_timeout_seconds)),
        websocket=bool(raw.get("websocket", False)),
        rate_limit=None if rate_limit is None else int(rate_limit),
        limit_key=limit_key,  # type: ignore[arg-type]  # checked above
        name=str(raw.get("name", "")),
    )


def load_table(settings: Settings) -> RouteTable:
    """The default table, or the one in the file named by ``AIHUB_GATEWAY_ROUTES``.

    A file holds ``routes`` (a list) and optionally ``upstreams`` (group name to URL list);
    groups it does not name fall back to the auth/core/mcp URLs from settings. An optional
    ``health_paths`` (group name to path) sets what the active health check probes; groups
    named auth and core probe ``/health/ready``, any other ``/health``.
    """
    if not settings.gateway_routes:
        return default_table(settings)
    path = Path(settings.gateway_routes)
    text = path.read_text()
    data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        raise ValueError(f"{path}: expected a mapping with a 'routes' list")
    upstreams: dict[str, list[str]] = {name: settings.upstream_urls(name) for name in ("auth", "core", "mcp")}
    for name, urls in (data.get("upstreams") or {}).items():
        upstreams[str(name)] = [urls] if isinstance(urls, str) else [str(u) for u in urls]
    routes = [_route_from(raw, settings) for raw in data["routes"]]
    health_paths = dict(_READINESS)
    for name, health in (data.get("health_paths") or {}).items():
        health_paths[str(name)] = str(health)
    return RouteTable(_sorted(routes), upstreams, health_paths)
