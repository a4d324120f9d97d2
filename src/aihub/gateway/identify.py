"""Who is calling, as a route's auth mode asks: an API key (core says whose, apikeys.py), a JWT
(verified here, authcheck.py), or nobody.

Only the credential is checked here; the blacklist and the rate limit come after, in one Redis
round trip (limits.py). A credential refused with a 4xx counts an ``auth`` strike against the
client address (ipblock.py): enough of them and the address is banned.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from aihub.gateway.apikeys import KeyResolver
from aihub.gateway.authcheck import (
    Identity,
    IdentityCache,
    authenticate,
    authenticate_after_refetch,
    bearer_token,
)
from aihub.gateway.context import Ctx
from aihub.gateway.ipblock import Strikes
from aihub.gateway.routing import Route
from aihub.kit.apikeys import presented_key
from aihub.kit.errors import AppError, Unauthorized
from aihub.kit.jwt import TokenCodec, UnknownSigningKey


class Identifier:
    def __init__(self, codec: TokenCodec, keys: KeyResolver, strikes: Strikes, *, ban_after: int) -> None:
        self.codec = codec
        self.keys = keys
        self.strikes = strikes
        self.ban_after = ban_after  # auth failures from one address within the ban window
        self.identities = IdentityCache()
        self.session: aiohttp.ClientSession | None = None  # set when the gateway starts

    async def identify(self, request: web.Request, ctx: Ctx, route: Route) -> Identity | None:
        """The caller's identity (also noted on ``ctx`` for the access log), or None on a
        public route or for an anonymous caller where the route allows one."""
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
                await self.strikes.strike("auth", ctx.client_ip, self.ban_after)
            raise
        if identity is not None:
            ctx.user_id = identity.user_id
            ctx.api_key_id = identity.api_key_id
        return identity
