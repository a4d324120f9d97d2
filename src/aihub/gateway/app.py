"""The gateway application: one catch-all handler that runs every check in a fixed order.

Order per request: request ID and client address → IP block → gateway's own endpoints →
CORS preflight → route match → identity (identify.py) → blacklist + rate limit in one Redis
round trip (limits.py) → proxy (HTTP or WebSocket) → one access-log line and the metrics
(accesslog.py). Security, CORS, request-ID and rate-limit headers are added in
``on_response_prepare`` (headers.py) so that streamed, proxied and generated responses all get
them. A single handler instead of aiohttp middlewares keeps the hot path to one coroutine per
request; each concern it calls keeps its state in its own module (see ``aihub.gateway``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse

import aiohttp
import structlog
from aiohttp import web

from aihub.config import Settings
from aihub.gateway import metrics, upstream
from aihub.gateway.accesslog import AccessLog
from aihub.gateway.apikeys import KeyResolver
from aihub.gateway.balancer import Balancer
from aihub.gateway.console import Console, ConsoleFiles, is_console, to_console
from aihub.gateway.context import CTX, Ctx, error_response
from aihub.gateway.docs import Docs, is_docs
from aihub.gateway.edges import normalise_path
from aihub.gateway.headers import Cors, ResponseHeaders
from aihub.gateway.health import PATHS as HEALTH_PATHS
from aihub.gateway.health import Health
from aihub.gateway.identify import Identifier
from aihub.gateway.ipblock import BlockList, Strikes, client_ip, is_trusted
from aihub.gateway.ipblock_admin import ROUTE as ADMIN_ROUTE
from aihub.gateway.ipblock_admin import AdminCheck, BlockAdmin, is_admin_path
from aihub.gateway.limits import Limits
from aihub.gateway.openapi import SchemaCache
from aihub.gateway.proxy import forward, upstream_headers
from aihub.gateway.ratelimit import Limiter, create_limiter
from aihub.gateway.routing import RouteTable, load_table
from aihub.gateway.websocket import proxy_websocket
from aihub.kit.errors import AppError, Forbidden, NotFound
from aihub.kit.jwt import TokenCodec
from aihub.kit.middleware import pick_request_id
from aihub.kit.serve import DRAIN, DrainFlag
from aihub.kit.store import Store, create_store

log = structlog.get_logger("aihub.gateway")

# Every path the gateway answers itself lies outside /api/ or under this one.
_GATEWAY_API = "/api/gateway"


class Gateway:
    def __init__(
        self, settings: Settings, store: Store, codec: TokenCodec, table: RouteTable, *, workers: int = 1
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec
        self.table = table
        self.trusted = settings.trusted_proxy_networks
        self.connect_timeout = settings.gateway_connect_timeout_seconds  # read per request: one lookup
        self.drain = DrainFlag()
        # Set when the server stops (after the drain delay): open WebSockets close with 1001.
        self.going_away = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self._flusher: asyncio.Task[None] | None = None
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
        keys = KeyResolver(
            self.balancer,
            ttl=settings.gateway_api_key_cache_seconds,
            timeout=self.connect_timeout + 5.0,
        )
        self.identifier = Identifier(codec, keys, self.strikes, ban_after=settings.gateway_ban_after_auth_failures)
        self.limits = Limits(self.limiter, self.strikes, settings)
        self.cors = Cors(settings.cors_origin_list)
        self.headers = ResponseHeaders(self.cors, self.drain)
        self.health = Health(settings, store, self.limiter, self.balancer, table, codec, self.drain, workers=workers)
        self.openapi = SchemaCache(self.balancer, table)
        self.docs = Docs(self.openapi)
        self.console = (
            Console(ConsoleFiles.load(), google_sign_in=settings.google_sign_in_configured)
            if settings.console_enabled
            else None
        )
        self.admins = AdminCheck(self.balancer, table)
        self.block_admin = BlockAdmin(self.blocks, self.admins)
        # Decided once: the access line is written unless turned off or below the log level.
        self.access_log = AccessLog(
            enabled=settings.gateway_access_log and logging.getLevelName(settings.log_level.upper()) <= logging.INFO
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.session = upstream.session(loop)
        self.access_log.bind(loop)
        self.balancer.start(self.session)
        self.identifier.session = self.admins.session = self.docs.session = self.session
        self.blocks.start()
        if self.codec.jwks is not None:
            self.codec.jwks.start()
        self._flusher = loop.create_task(metrics.flush_forever())

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

    # ------------------------------------------------------------------ dispatch
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
            response = error_response(ctx, exc.status_code, exc.code, exc.message, exc.details, exc.headers)
        except Exception:
            log.exception("gateway_error", request_id=ctx.request_id, path=request.path)
            response = error_response(ctx, 500, "INTERNAL_ERROR", "Something went wrong on our side")
        self.access_log.observe(request, ctx, response.status)
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
            return self.cors.preflight(request)
        path = normalise_path(raw)  # what routes match and the upstream receives (edges.py)
        if is_admin_path(path):
            return await self._admin(request, ctx, path)
        route = self.table.match(path)
        if route is None and path == "/" and self.console is not None:
            return to_console()  # a newcomer opening the gateway's address finds the console
        if route is None:
            raise NotFound("No route for this path")
        ctx.route = route.label()
        identity = await self.identifier.identify(request, ctx, route)
        if identity is not None or self.limits.enabled:  # else nothing to check
            await self.limits.check(ctx, route, identity)
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
        ctx.proxied = True  # from here the answer is the upstream's, unless an error replaces it
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
                connect_timeout=self.connect_timeout,
                going_away=self.going_away,
            )
        return await forward(request, self.session, group, route, target, headers, ctx.hop, self.connect_timeout)

    async def _own(self, request: web.Request, ctx: Ctx, raw: str) -> web.StreamResponse | None:
        """The gateway's own answers, in their order; None for a path they leave to the routes."""
        if raw in HEALTH_PATHS:
            ctx.route = raw
            return await self.health.answer(request, ctx, raw)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            ctx.route = "preflight"
            return self.cors.preflight(request)
        # Before normalising: the gateway answers these itself (docs are exact paths), and an
        # unblock names a CIDR, whose "/" the last segment carries encoded.
        if is_docs(raw):
            ctx.route = "docs"  # public, like /health: the contract is no secret
            return await self.docs.answer(request, ctx, raw)
        if self.console is not None and is_console(raw):
            ctx.route = "console"
            return self.console.answer(request, ctx, raw)
        if is_admin_path(raw):
            return await self._admin(request, ctx, raw)
        return None

    async def _admin(self, request: web.Request, ctx: Ctx, path: str) -> web.Response:
        """The block-list API (ipblock_admin.py), its caller identified and limited as on any route."""
        ctx.route = "gateway-admin"
        identity = await self.identifier.identify(request, ctx, ADMIN_ROUTE)
        if identity is not None or self.limits.enabled:
            await self.limits.check(ctx, ADMIN_ROUTE, identity)
        return await self.block_admin.answer(request, ctx, identity, path)


def _without_token(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return urllib.parse.urlencode([(k, v) for k, v in pairs if k != "access_token"])


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
    app.on_response_prepare.append(gateway.headers.on_prepare)

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
