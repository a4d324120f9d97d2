"""Which bucket a request counts against, and what the limiter's decision means for it.

The counting itself is ratelimit.py: the token's and the API key's revocation markers, the
bucket and the key's own per-minute bucket, all in one Redis round trip (or the per-process
fallback). Here: a verified user is keyed by id, anyone else by client address; a route with
its own limit has its own bucket; the answer is rate-limit headers, a 429 with a ``rate``
strike, or the revocation (401/403, an ``auth`` strike) the same round trip found.
"""

from __future__ import annotations

import functools

from aihub.config import Settings
from aihub.gateway import metrics
from aihub.gateway.authcheck import Identity
from aihub.gateway.context import Ctx
from aihub.gateway.ipblock import Strikes
from aihub.gateway.ratelimit import Decision, KeyCheck, Limiter
from aihub.gateway.routing import Route
from aihub.kit.apikeys import InvalidApiKey
from aihub.kit.errors import AccountSuspended, AppError, ServiceUnavailable
from aihub.kit.jwt import TokenRevoked


class RateLimited(AppError):
    status_code, code, message = 429, "RATE_LIMIT_EXCEEDED", "Too many requests, try again later"


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


class Limits:
    def __init__(self, limiter: Limiter, strikes: Strikes, settings: Settings) -> None:
        self.limiter = limiter
        self.strikes = strikes
        # Settings are frozen: read once here rather than through ``settings`` per request.
        self.enabled = settings.rate_limit_enabled
        self.window = settings.rate_limit_window_seconds
        self.role_limits = settings.role_rate_limits
        self.user_limit = settings.rate_limit_user
        self.ban_after_auth = settings.gateway_ban_after_auth_failures
        self.ban_after_rate = settings.gateway_ban_after_rate_limited

    def bucket(self, ctx: Ctx, route: Route, identity: Identity | None) -> tuple[str, int]:
        # A "session" route (Sora) keys a verified user by id like any other; its session
        # token is checked by core, not here, so it cannot name a bucket: a client would mint
        # a fresh one per request. Unverified session traffic shares its client address's.
        who = f"u:{identity.user_id}" if identity else f"ip:{ctx.client_ip}"
        if route.rate_limit is not None:
            if route.limit_key == "ip":
                who = f"ip:{ctx.client_ip}"
            return f"rl:{route.prefix}:{who}", route.rate_limit
        role = identity.role if identity else "guest"
        return f"rl:{who}", self.role_limits.get(role, self.user_limit)

    async def check(self, ctx: Ctx, route: Route, identity: Identity | None) -> None:
        """Raises when the request may not go on; else notes its rate-limit headers on ``ctx``.
        With limits off, an identified caller's revocation is still checked."""
        if self.enabled:
            key, limit = self.bucket(ctx, route, identity)
        elif identity is not None:
            key, limit = "", 0  # the blacklist is still checked
        else:
            return
        api_key = None
        if identity is not None and identity.api_key_id is not None:
            rpm = identity.claims.raw.get("requestsPerMinute")
            per_minute = rpm if isinstance(rpm, int) and self.enabled else 0
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
            await self.strikes.strike("auth", ctx.client_ip, self.ban_after_auth)
            if decision.suspended:
                raise AccountSuspended
            raise InvalidApiKey if api_key is not None else TokenRevoked
        if decision.unavailable:
            metrics.decide("unavailable")
            raise ServiceUnavailable("Rate limiting is unavailable; try again shortly")
        metrics.decide("limited")
        ctx.limit_headers = _limit_headers(decision, self.window)
        await self.strikes.strike("rate", ctx.client_ip, self.ban_after_rate)
        raise RateLimited
