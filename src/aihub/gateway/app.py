"""The gateway application: one catch-all handler that runs every check in a fixed order.

Order per request: request ID and client address → IP block → gateway's own endpoints →
CORS preflight → route match → token → blacklist + rate limit (one Redis round trip) →
proxy (HTTP or WebSocket) → one access-log line and the metrics. Security, CORS, request-ID
and rate-limit headers are added in ``on_response_prepare`` so that streamed, proxied and
generated responses all get them. A single handler instead of aiohttp middlewares keeps the
hot path to one coroutine per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from aihub.config import Settings
from aihub.gateway import metrics, upstream
from aihub.gateway.accesslog import AccessLog
from aihub.gateway.admin import AdminCheck, admin_body, network_of, parse_block
from aihub.gateway.apikeys import AccountSuspended, InvalidApiKey, KeyResolver
from aihub.gateway.authcheck import (
    Identity,
    IdentityCache,
    authenticate,
    authenticate_after_refetch,
    bearer_token,
)
from aihub.gateway.balancer import Balancer
from aihub.gateway.console import CONFIG_PATH, CONSOLE_CSP, ConsoleFiles, is_console
from aihub.gateway.docs import DOCS_CSP, DOCS_PATH, asset
from aihub.gateway.edges import normalise_path
from aihub.gateway.headers import Cors, add_security
from aihub.gateway.ipblock import BlockList, Strikes, client_ip, is_trusted
from aihub.gateway.openapi import SchemaCache
from aihub.gateway.proxy import Forwarded, forward, upstream_headers
from aihub.gateway.ratelimit import Decision, KeyCheck, Limiter, create_limiter
from aihub.gateway.routing import Route, RouteTable, load_table
from aihub.gateway.websocket import proxy_websocket
from aihub.kit.apikeys import presented_key
from aihub.kit.errors import AppError, Forbidden, NotFound, ServiceUnavailable, Unauthorized, error_body
from aihub.kit.jsonutil import dumps
from aihub.kit.jwt import TokenCodec, TokenRevoked, UnknownSigningKey
from aihub.kit.metrics import client_allowed, scrape
from aihub.kit.middleware import pick_request_id
from aihub.kit.serve import DRAIN, DrainFlag
from aihub.kit.store import Store, StoreUnavailable, create_store

log = structlog.get_logger("aihub.gateway")

ADMIN_PREFIX = "/api/gateway/blocked-ips"
_ADMIN_ROUTE = Route("/api/gateway", "gateway", name="gateway-admin")
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET = frozenset({"/health", "/health/ready", "/metrics"})
# Every path the gateway answers itself lies outside /api/ or under this one.
_GATEWAY_API = "/api/gateway"


class RateLimited(AppError):
    status_code, code, message = 429, "RATE_LIMIT_EXCEEDED", "Too many requests, try again later"


@dataclass(slots=True)
class Ctx:
    request_id: str
    client_ip: str
    started: float
    route: str = "unmatched"
    generated: bool = False
    user_id: str | None = None
    api_key_id: str | None = None  # the access log names a key by its id, never the key
    limit_headers: dict[str, str] | None = None
    hop: Forwarded = field(default_factory=Forwarded)


CTX = web.RequestKey("aihub_gateway_ctx", Ctx)


@functools.lru_cache(maxsize=1024)
def _policy(limit: int, window: int) -> tuple[str, str]:
    return f"{limit};w={window}", str(limit)  # a route's or a role's: the same on every request


def _limit_headers(decision: Decision, window: int) -> dict[str, str]:
    policy, limit = _policy(decision.limit, window)
    headers = {
        "RateLimit-Policy": policy,
        "RateLimit-Limit": limit,
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after)
    return headers


class Gateway:
    def __init__(
        self, settings: Settings, store: Store, codec: TokenCodec, table: RouteTable, *, workers: int = 1
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec
        self.table = table
        self.cors = Cors(settings.cors_origin_list)
        self.workers = workers
        self.limiter: Limiter = create_limiter(
            store,
            window_seconds=settings.rate_limit_window_seconds,
            fail_closed=settings.rate_limit_fail_closed,
            workers=workers,
        )
        self.blocks = BlockList(store, settings.deny_networks)
        self.strikes = Strikes(
            store, self.blocks, window=settings.gateway_ban_window_seconds, ban_seconds=settings.gateway_ban_seconds
        )
        self.balancer = Balancer(
            table.upstreams,
            eject_after=settings.gateway_eject_after_failures,
            eject_seconds=settings.gateway_eject_seconds,
            health_interval=settings.gateway_health_interval_seconds,
            health_paths=table.health_paths,
        )
        self.openapi = SchemaCache(self.balancer, table)
        self.keys = KeyResolver(
            self.balancer,
            ttl=settings.gateway_api_key_cache_seconds,
            timeout=settings.gateway_connect_timeout_seconds + 5.0,
        )
        self.drain = DrainFlag()
        # Set when the server stops (after the drain delay): open WebSockets close with 1001.
        self.going_away = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.role_limits = settings.role_rate_limits
        self.window = settings.rate_limit_window_seconds
        self.trusted = settings.trusted_proxy_networks
        self.admins = AdminCheck(self.balancer, table)
        self.identities = IdentityCache()
        self.access_log = AccessLog()
        # Decided once: the access line is written unless turned off or below the log level.
        self.log_requests = (
            settings.gateway_access_log and logging.getLevelName(settings.log_level.upper()) <= logging.INFO
        )
        self._flusher: asyncio.Task[None] | None = None
        self.console = ConsoleFiles.load() if settings.console_enabled else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.session = upstream.session(loop)
        self.access_log.bind(loop)
        self.balancer.start(self.session)
        self.admins.session = self.session
        self.blocks.start()
        if self.codec.jwks is not None:
            self.codec.jwks.start()
        self._flusher = asyncio.get_running_loop().create_task(metrics.flush_forever())

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        metrics.flush()
        self.access_log.flush()
        await self.balancer.stop()
        await self.blocks.stop()
        await self.limiter.close()
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------ the handler
    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote
        ctx = Ctx(
            request_id=pick_request_id(request.headers.get("X-Request-Id")),
            client_ip=client_ip(peer, request.headers.get("X-Forwarded-For"), self.trusted),
            started=time.perf_counter(),
        )
        request[CTX] = ctx
        try:
            response = await self._dispatch(request, ctx)
        except AppError as exc:
            response = self.error(ctx, exc.status_code, exc.code, exc.message, exc.details, exc.headers)
        except Exception:
            log.exception("gateway_error", request_id=ctx.request_id, path=request.path)
            response = self.error(ctx, 500, "INTERNAL_ERROR", "Something went wrong on our side")
        self._observe(request, ctx, response.status)
        return response

    async def _dispatch(self, request: web.Request, ctx: Ctx) -> web.StreamResponse:
        if self.blocks.blocked(ctx.client_ip):
            metrics.BLOCKED.inc()
            raise Forbidden("Requests from your address are blocked")
        raw, _, query = request.raw_path.partition("?")
        if not raw.startswith("/api/") or raw.startswith(_GATEWAY_API):
            own = await self._own(request, ctx, raw)
            if own is not None:
                return own
        elif request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # An API path (the common case) can only be a preflight among the gateway's own answers.
            ctx.route = "preflight"
            return self._preflight(request, ctx)
        path = normalise_path(raw)  # what routes match and the upstream receives (edges.py)
        if _is_admin(path):
            return await self._admin_request(request, ctx, path)
        route = self.table.match(path)
        if route is None and path == "/" and self.console is not None:
            ctx.generated = True  # a newcomer opening the gateway's address finds the console
            return web.Response(status=308, headers={"Location": "/console/"})
        if route is None:
            raise NotFound("No route for this path")
        ctx.route = route.label()
        identity = await self._identify(request, ctx, route)
        assert self.session is not None
        group = self.balancer.groups[route.upstream]
        target = route.upstream_path(path)
        is_ws = route.websocket and request.headers.get("Upgrade", "").lower() == "websocket"
        if is_ws:
            query = _without_token(request.query_string)
        if query:
            target = f"{target}?{query}"
        headers = upstream_headers(
            request.headers,
            peer=request.remote or "unknown",
            peer_trusted=is_trusted(request.remote, self.trusted),
            scheme=request.scheme,
            host=request.host,
            request_id=ctx.request_id,
            user_id=identity.user_id if identity else None,
            role=identity.role if identity else None,
        )
        if identity is not None and identity.api_key_id is not None:
            headers["X-Api-Key-Id"] = identity.api_key_id
        if is_ws:
            return await proxy_websocket(
                request,
                self.session,
                group,
                target,
                headers,
                ctx.hop,
                max_message=self.settings.gateway_ws_max_message_bytes,
                idle=self.settings.gateway_ws_idle_seconds,
                connect_timeout=self.settings.gateway_connect_timeout_seconds,
                going_away=self.going_away,
            )
        return await forward(
            request, self.session, group, route, target, headers, ctx.hop, self.settings.gateway_connect_timeout_seconds
        )

    async def _own(self, request: web.Request, ctx: Ctx, raw: str) -> web.StreamResponse | None:
        """The gateway's own answers, in their order; None for a path they leave to the routes."""
        if raw in _QUIET:
            ctx.route = raw
            return await self._local(request, ctx, raw)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            ctx.route = "preflight"
            return self._preflight(request, ctx)
        # Before normalising: the gateway answers these itself (docs are exact paths), and an
        # unblock names a CIDR, whose "/" the last segment carries encoded.
        if raw == "/openapi.json" or raw == DOCS_PATH or raw.startswith(DOCS_PATH + "/"):
            ctx.route = "docs"  # public, like /health: the contract is no secret
            return await self._docs(request, ctx, raw)
        if self.console is not None and is_console(raw):
            ctx.route = "console"
            return self._console(request, ctx, raw)
        if _is_admin(raw):
            return await self._admin_request(request, ctx, raw)
        return None

    # ------------------------------------------------------------------ identity and limits
    async def _identify(self, request: web.Request, ctx: Ctx, route: Route) -> Identity | None:
        mode = route.auth_for(request.method)
        token: str | None
        try:
            token = bearer_token(request.headers.get("Authorization"))
            if token is None and route.websocket:
                token = request.query.get("access_token")  # browsers cannot set headers on an upgrade
            identity = None
            raw_key = presented_key(request.headers.get("X-API-Key"), token)
            if raw_key is not None and mode != "public":
                assert self.session is not None
                identity = await self.keys.identify(self.session, raw_key, ctx.client_ip, ctx.request_id)
            elif token is None and mode == "jwt":
                raise Unauthorized
            elif token is not None and mode != "public":
                identity = self.identities.get(token)
                if identity is None or identity.expired():
                    try:
                        identity = authenticate(self.codec, token)
                    except UnknownSigningKey as unknown:  # rare: a key rotation, or a forged kid
                        identity = await authenticate_after_refetch(self.codec, token, unknown)
                    self.identities.put(token, identity)
        except AppError as exc:
            if exc.status_code < 500:  # core unreachable for a key lookup is no client's fault
                await self.strikes.strike("auth", ctx.client_ip, self.settings.gateway_ban_after_auth_failures)
            raise
        if identity is not None:
            ctx.user_id = identity.user_id
            ctx.api_key_id = identity.api_key_id
        if identity is not None or self.settings.rate_limit_enabled:  # else nothing to check
            await self._limit(request, ctx, route, identity)
        return identity

    def _bucket(self, ctx: Ctx, route: Route, identity: Identity | None) -> tuple[str, int]:
        # A "session" route (Sora) keys a verified user by id like any other; its session
        # token is checked by core, not here, so it cannot name a bucket: a client would mint
        # a fresh one per request. Unverified session traffic shares its client address's.
        who = f"u:{identity.user_id}" if identity else f"ip:{ctx.client_ip}"
        if route.rate_limit is not None:
            if route.limit_key == "ip":
                who = f"ip:{ctx.client_ip}"
            return f"rl:{route.prefix}:{who}", route.rate_limit
        role = identity.role if identity else "guest"
        return f"rl:{who}", self.role_limits.get(role, self.settings.rate_limit_user)

    async def _limit(self, request: web.Request, ctx: Ctx, route: Route, identity: Identity | None) -> None:
        if self.settings.rate_limit_enabled:
            key, limit = self._bucket(ctx, route, identity)
        elif identity is not None:
            key, limit = "", 0  # the blacklist is still checked
        else:
            return
        api_key = None
        if identity is not None and identity.api_key_id is not None:
            rpm = identity.claims.raw.get("requestsPerMinute")
            per_minute = rpm if isinstance(rpm, int) and self.settings.rate_limit_enabled else 0
            api_key = KeyCheck(f"blacklist:apikey-user:{identity.user_id}", f"rlk:{identity.api_key_id}", per_minute)
        jti, sid = (identity.jti, identity.sid) if identity else (None, None)
        decision = await self.limiter.check(jti, key, limit, sid=sid, api_key=api_key)
        if decision.allowed:
            metrics.decide("allowed")
            if decision.limit > 0:
                ctx.limit_headers = _limit_headers(decision, self.window)
            return
        if decision.revoked:
            metrics.decide("revoked")
            await self.strikes.strike("auth", ctx.client_ip, self.settings.gateway_ban_after_auth_failures)
            if decision.suspended:
                raise AccountSuspended
            raise InvalidApiKey if api_key is not None else TokenRevoked
        if decision.unavailable:
            metrics.decide("unavailable")
            raise ServiceUnavailable("Rate limiting is unavailable; try again shortly")
        metrics.decide("limited")
        ctx.limit_headers = _limit_headers(decision, self.window)
        await self.strikes.strike("rate", ctx.client_ip, self.settings.gateway_ban_after_rate_limited)
        raise RateLimited

    # ------------------------------------------------------------------ gateway's own answers
    def error(
        self,
        ctx: Ctx,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return self.json(ctx, error_body(code, message, ctx.request_id, details), status, headers)

    @staticmethod
    def json(ctx: Ctx, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        ctx.generated = True
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)

    async def _local(self, request: web.Request, ctx: Ctx, path: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return self.error(ctx, 405, "METHOD_NOT_ALLOWED", "This method is not allowed on this resource")
        if path == "/health":
            return self.json(ctx, b'{"status":"ok"}')
        if path == "/health/ready":
            return await self._ready(ctx)
        if not client_allowed(request.remote, self.settings):
            raise Forbidden("Metrics are not available from this address")
        ctx.generated = True
        metrics.flush()  # this process's tally; other workers' are at most a second behind
        return web.Response(body=scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _ready(self, ctx: Ctx) -> web.Response:
        """``status`` reflects aihub's own dependencies only: Redis, the JWKS, and the upstream
        groups aihub itself serves (auth, core; ``RouteTable.own``). Any other group (mcp, or
        one a route file adds) is an optional upstream: reported under ``upstreams`` and named
        in ``optional``, but its absence leaves the gateway ``ok`` (its routes answer 503)."""
        if self.store.kind == "redis":
            redis = "degraded" if self.limiter.degraded or not await self.store.ping() else "ok"
        else:
            redis = "memory"
        upstreams = self.balancer.summary()
        own = [name for name in upstreams if name in self.table.own]
        empty = [name for name in own if upstreams[name]["healthy"] == 0]
        jwks = self.codec.jwks.state if self.codec.jwks is not None else None  # None: keys from settings
        if self.drain.draining or jwks == "loading" or (own and len(empty) == len(own)):
            status = "down"
        elif redis == "degraded" or empty or jwks == "stale":
            status = "degraded"
        else:
            status = "ok"
        checks: dict[str, Any] = {"redis": redis, "upstreams": upstreams}
        if self.workers > 1:
            checks["worker"] = {"pid": os.getpid(), "workers": self.workers}  # readiness is per worker
        optional = sorted(name for name in upstreams if name not in self.table.own)
        if optional:
            checks["optional"] = optional
        if jwks is not None:
            checks["jwks"] = jwks
        body = {"status": status, "checks": checks}
        return self.json(ctx, dumps(body), 503 if status == "down" else 200)

    async def _docs(self, request: web.Request, ctx: Ctx, path: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return self.error(ctx, 405, "METHOD_NOT_ALLOWED", "This method is not allowed on this resource")
        if path == "/openapi.json":
            assert self.session is not None
            body, _complete = await self.openapi.document(self.session)
            return self.json(ctx, body, headers={"Cache-Control": "no-cache"})
        found = asset(path)
        if found is None:
            raise NotFound("No such file")
        headers = {
            "Content-Type": found.content_type,
            "Cache-Control": found.cache_control,
            "Content-Security-Policy": DOCS_CSP,  # ctx.generated stays False: on_prepare keeps this one
            "Vary": "Accept-Encoding",
        }
        body = found.body
        if found.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body, headers["Content-Encoding"] = found.gzipped, "gzip"
        return web.Response(body=body, headers=headers)

    def _console(self, request: web.Request, ctx: Ctx, path: str) -> web.Response:
        """The console's static files: public (they hold no data; the API checks every call)."""
        assert self.console is not None
        if request.method not in ("GET", "HEAD"):
            return self.error(ctx, 405, "METHOD_NOT_ALLOWED", "This method is not allowed on this resource")
        if path == "/console":
            ctx.generated = True
            return web.Response(status=308, headers={"Location": "/console/"})
        if path == CONFIG_PATH:
            # What the sign-in page offers; public, like the files (no secret, no per-user data).
            return web.json_response(
                {"googleSignIn": self.settings.google_sign_in_configured},
                headers={"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-cache"},
            )
        file = self.console.find(path)
        if file is None:
            raise NotFound("No such console file")
        headers = {"Content-Security-Policy": CONSOLE_CSP, "Cache-Control": "no-cache", "ETag": file.etag}
        if file.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=file.body, headers={**headers, "Content-Type": file.content_type})

    def _preflight(self, request: web.Request, ctx: Ctx) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is None or not self.cors.allowed(origin):
            raise Forbidden("This origin is not allowed")
        headers = self.cors.preflight_headers(origin, request.headers.get("Access-Control-Request-Headers"))
        ctx.generated = True
        return web.Response(status=204, headers=headers)

    async def _admin_request(self, request: web.Request, ctx: Ctx, path: str) -> web.Response:
        ctx.route = "gateway-admin"
        identity = await self._identify(request, ctx, _ADMIN_ROUTE)
        if identity is None:
            raise Unauthorized
        if not identity.has_permission("gateway:admin"):
            raise Forbidden  # the token does not even claim it: no need to ask core
        # Core is asked with the caller's own credential: its bearer token, or its API key
        # (which core also takes as a bearer) when it came as X-API-Key.
        bearer = bearer_token(request.headers.get("Authorization"))
        credential = presented_key(request.headers.get("X-API-Key"), bearer) or bearer
        assert credential is not None  # an identity comes from a token or a key on this route
        await self.admins.require(identity, credential, ctx.request_id)
        return await self._admin(request, ctx, identity, path)

    async def _admin(self, request: web.Request, ctx: Ctx, identity: Identity, path: str) -> web.Response:
        rest = urllib.parse.unquote(path[len(ADMIN_PREFIX) :].lstrip("/"))
        try:
            if not rest and request.method == "GET":
                return self.json(ctx, dumps({"items": await self.blocks.list(), "nextCursor": None}))
            if not rest and request.method == "POST":
                block_request = parse_block(await admin_body(request))
                block_request.check_caller(ctx.client_ip)
                reason = block_request.reason or f"admin {identity.user_id}"
                block = await self.blocks.add(block_request.network, ttl=block_request.ttl, reason=reason)
                return self.json(ctx, dumps(block.view()), 201)
            if rest and request.method == "DELETE":
                if not await self.blocks.remove(str(network_of(rest))):
                    raise NotFound("This address is not blocked")
                ctx.generated = True
                return web.Response(status=204)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The block list store is unavailable") from exc
        return self.error(ctx, 405, "METHOD_NOT_ALLOWED", "This method is not allowed on this resource")

    # ------------------------------------------------------------------ headers and logs
    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        ctx = request.get(CTX)
        headers = response.headers
        headers["X-Request-Id"] = ctx.request_id if ctx else pick_request_id(None)
        headers["Server"] = "aihub"  # not aiohttp's default, which names the Python and aiohttp versions
        add_security(headers, generated=ctx is None or ctx.generated)
        if self.cors.origins:
            self.cors.add(headers, request.headers.get("Origin"))
        if ctx is not None and ctx.limit_headers:
            headers.update(ctx.limit_headers)
        if self.drain.draining:
            response.force_close()  # shutting down: the client's next request opens elsewhere

    def _observe(self, request: web.Request, ctx: Ctx, status: int) -> None:
        elapsed = time.perf_counter() - ctx.started
        method = request.method if request.method in _KNOWN_METHODS else "OTHER"
        metrics.observe(ctx.route, method, status, elapsed)
        if not self.log_requests or (ctx.route in _QUIET and status < 400):
            return
        self.access_log.write(
            {
                "service": "gateway",
                "request_id": ctx.request_id,
                "method": method,
                "path": request.path,  # never the query: it may carry an access_token
                "route": ctx.route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "user_id": ctx.user_id,
                "api_key_id": ctx.api_key_id,
                "client_ip": ctx.client_ip,
                "upstream": ctx.hop.instance,
                "bytes": ctx.hop.bytes_out,
            }
        )


def _without_token(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode([(k, v) for k, v in pairs if k != "access_token"])


def _is_admin(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


GATEWAY = web.AppKey("aihub_gateway", Gateway)


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    codec: TokenCodec | None = None,
    table: RouteTable | None = None,
    workers: int = 1,
) -> web.Application:
    """The gateway as an aiohttp application. Without ``store`` it opens (and closes) its own.

    ``workers``: how many gateway processes share the port (the per-process fallback limiter
    divides every limit by it)."""
    owns_store = store is None
    shared = store if store is not None else create_store(settings.redis_url)
    gateway = Gateway(
        settings, shared, codec or TokenCodec.from_settings(settings), table or load_table(settings), workers=workers
    )
    # auto_decompress off: a compressed request body is decoded in proxy.read_decoded, where
    # the body limit applies to what it expands to and the forwarded headers are fixed.
    app = web.Application(handler_args={"max_field_size": 16_384, "auto_decompress": False})
    app[GATEWAY] = gateway
    app[DRAIN] = gateway.drain
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    app.on_response_prepare.append(gateway.on_prepare)

    async def on_startup(_: web.Application) -> None:
        await gateway.start()

    async def on_shutdown(_: web.Application) -> None:
        # The listener is closed already; in-flight HTTP requests go on until the timeout.
        gateway.going_away.set()

    async def on_cleanup(_: web.Application) -> None:
        await gateway.stop()
        if codec is None and gateway.codec.jwks is not None:
            await gateway.codec.jwks.close()  # a shared codec is closed by its runtime
        if owns_store:
            await shared.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
