"""The gateway's quiet endpoints: ``/health`` (alive), ``/health/ready`` (fit to serve) and
``/metrics`` (Prometheus, for the configured networks only).

Readiness reflects aihub's own dependencies only: Redis, the JWKS, and the upstream groups
aihub itself serves (auth, core; ``RouteTable.own``). Any other group (mcp, or one a route file
adds) is an optional upstream: reported under ``upstreams`` and named in ``optional``, but its
absence leaves the gateway ``ok`` (its routes answer 503).
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from aihub.config import Settings
from aihub.gateway import metrics
from aihub.gateway.balancer import Balancer
from aihub.gateway.context import Ctx, json_response, method_not_allowed
from aihub.gateway.ratelimit import Limiter
from aihub.gateway.routing import RouteTable
from aihub.kit.errors import Forbidden
from aihub.kit.jsonutil import dumps
from aihub.kit.jwt import TokenCodec
from aihub.kit.metrics import client_allowed, scrape
from aihub.kit.serve import DrainFlag
from aihub.kit.store import Store

PATHS = frozenset({"/health", "/health/ready", "/metrics"})


class Health:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        limiter: Limiter,
        balancer: Balancer,
        table: RouteTable,
        codec: TokenCodec,
        drain: DrainFlag,
        *,
        workers: int,
    ) -> None:
        self.settings = settings
        self.store = store
        self.limiter = limiter
        self.balancer = balancer
        self.table = table
        self.codec = codec
        self.drain = drain
        self.workers = workers

    async def answer(self, request: web.Request, ctx: Ctx, path: str) -> web.StreamResponse:
        """``path``: one of ``PATHS``."""
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed(ctx)
        if path == "/health":
            return json_response(b'{"status":"ok"}')
        if path == "/health/ready":
            return await self.ready()
        if not client_allowed(request.remote, self.settings):
            raise Forbidden("Metrics are not available from this address")
        metrics.flush()  # this process's tally; other workers' are at most a second behind
        return web.Response(body=scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def ready(self) -> web.Response:
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
        return json_response(dumps(body), 503 if status == "down" else 200)
