"""The block list's admin API (``/api/gateway/blocked-ips``): who may use it, what it takes, and
what it does to the ``BlockList`` (ipblock.py).

A token's claims say what the caller could do when the token was issued. The block list can
lock everyone out, so a demoted, suspended or deleted admin must lose it at once, not when
the token expires: every call asks core (``POST /api/permissions/check``, which reads the
user's status and effective permissions) and keeps the answer for at most ``ttl`` seconds.
The caller is identified and rate-limited by the dispatch (app.py) like any route's, under
``ROUTE``.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from aihub.gateway.authcheck import Identity, bearer_token
from aihub.gateway.balancer import Balancer
from aihub.gateway.context import Ctx, json_response, method_not_allowed
from aihub.gateway.ipblock import BlockList
from aihub.gateway.routing import Route, RouteTable
from aihub.kit.apikeys import presented_key
from aihub.kit.errors import AppError, Forbidden, NotFound, ServiceUnavailable, Unauthorized
from aihub.kit.jsonutil import dumps, loads
from aihub.kit.store import StoreUnavailable

log = structlog.get_logger("aihub.gateway.admin")

PREFIX = "/api/gateway/blocked-ips"
# The API's own route: identified and limited as any authenticated route is, by the role's limit.
ROUTE = Route("/api/gateway", "gateway", name="gateway-admin")
PERMISSION = "gateway:admin"
CHECK_PATH = "/api/permissions/check"
MAX_BODY = 16_384  # a block request is a few fields
MAX_REASON = 500
MAX_TTL = 10 * 365 * 86_400
_CACHE_SIZE = 1024


class BodyTooLarge(AppError):
    status_code, code, message = 413, "PAYLOAD_TOO_LARGE", "The request body is too large"


class NotJson(AppError):
    status_code, code, message = 415, "UNSUPPORTED_MEDIA_TYPE", "The request body must be application/json"


def _invalid(field: str, message: str, kind: str) -> AppError:
    details = [{"field": field, "message": message, "type": kind}]
    return AppError("The request is invalid", status_code=422, code="VALIDATION_ERROR", details=details)


class AdminCheck:
    """The caller's live ``gateway:admin``, from core, cached per token for ``ttl`` seconds."""

    def __init__(self, balancer: Balancer, table: RouteTable, *, ttl: float = 5.0) -> None:
        self.balancer = balancer
        route = table.match(CHECK_PATH)
        self.group = route.upstream if route is not None else None
        self.path = route.upstream_path(CHECK_PATH) if route is not None else CHECK_PATH
        self.ttl = ttl
        self.session: aiohttp.ClientSession | None = None
        self._verdicts: dict[str, tuple[float, int]] = {}  # jti -> (until, status core gave)

    async def require(self, identity: Identity, token: str, request_id: str) -> None:
        now = time.monotonic()
        cached = self._verdicts.get(identity.jti)
        if cached is not None and cached[0] > now:
            status = cached[1]
        else:
            status = await self._ask(token, request_id)
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts = {k: v for k, v in self._verdicts.items() if v[0] > now}
                if len(self._verdicts) >= _CACHE_SIZE:
                    self._verdicts.clear()
            self._verdicts[identity.jti] = (now + self.ttl, status)
        if status == 401:
            raise Unauthorized("This account can no longer sign in")
        if status != 200:
            raise Forbidden

    async def _ask(self, token: str, request_id: str) -> int:
        """200 allowed, 403 refused (or suspended), 401 unknown or deleted account; anything
        else is ServiceUnavailable and never cached."""
        group = self.balancer.groups.get(self.group) if self.group else None
        instance = group.pick() if group is not None else None
        if instance is None or self.session is None:
            raise ServiceUnavailable("Permissions cannot be checked right now")
        headers = {"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
        try:
            async with self.session.post(
                instance.url + self.path,
                json={"permission": PERMISSION},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=5),
                allow_redirects=False,
            ) as resp:
                if resp.status in (401, 403):
                    return resp.status
                if resp.status != 200:
                    raise ServiceUnavailable("Permissions cannot be checked right now")
                body = loads(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("permission_check_failed", error=type(exc).__name__)
            raise ServiceUnavailable("Permissions cannot be checked right now") from exc
        return 200 if isinstance(body, dict) and body.get("allowed") is True else 403


async def admin_body(request: web.Request) -> bytes:
    """The JSON body of an admin write: 415 unless JSON, 413 above ``MAX_BODY`` (announced
    or actual), read without ever holding more than that."""
    media = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise NotJson
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise NotJson("The request body must be uncompressed application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(MAX_BODY):
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


def network_of(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise _invalid("ip", "not an IP address or CIDR", "value_error") from exc


@dataclass(frozen=True, slots=True)
class BlockRequest:
    network: str
    ttl: float | None
    reason: str | None
    force: bool

    def check_caller(self, caller_ip: str) -> None:
        """A block that covers every address, or the caller's own, locks the admin out with
        everyone else: refused unless ``force`` says it is meant."""
        if self.force:
            return
        network = ipaddress.ip_network(self.network)
        if network.prefixlen == 0:
            raise _invalid("body.ip", "covers every address; send force: true to block it anyway", "covers_all")
        try:
            address = ipaddress.ip_address(caller_ip)
        except ValueError:
            return
        if address.version == network.version and address in network:
            raise _invalid("body.ip", "covers your own address; send force: true to block it anyway", "covers_caller")


def parse_block(raw: bytes) -> BlockRequest:
    try:
        data = loads(raw) if raw else None
    except ValueError as exc:
        raise AppError("The request body is not valid JSON", code="INVALID_JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("ip"), str):
        raise _invalid("body.ip", "an IP address or CIDR is required", "missing")
    network = network_of(data["ip"])
    ttl = data.get("ttlSeconds")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL):
        raise _invalid("body.ttlSeconds", f"an integer from 1 to {MAX_TTL}", "value_error")
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON or "\x00" in reason):
        raise _invalid("body.reason", f"a string of at most {MAX_REASON} characters", "value_error")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise _invalid("body.force", "true or false", "bool_type")
    return BlockRequest(str(network), None if ttl is None else float(ttl), reason or None, force)


def is_admin_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


class BlockAdmin:
    """List (``GET``), add (``POST``) and remove (``DELETE …/<ip or CIDR>``) blocks, for a caller
    whose ``gateway:admin`` core confirms."""

    def __init__(self, blocks: BlockList, check: AdminCheck) -> None:
        self.blocks = blocks
        self.check = check

    async def answer(self, request: web.Request, ctx: Ctx, identity: Identity | None, path: str) -> web.Response:
        """``path``: the raw path or the normalised one; an unblock names a CIDR, whose "/" the
        last segment carries encoded."""
        if identity is None:
            raise Unauthorized
        if not identity.has_permission(PERMISSION):
            raise Forbidden  # the token does not even claim it: no need to ask core
        # Core is asked with the caller's own credential: its bearer token, or its API key
        # (which core also takes as a bearer) when it came as X-API-Key.
        bearer = bearer_token(request.headers.get("Authorization"))
        credential = presented_key(request.headers.get("X-API-Key"), bearer) or bearer
        assert credential is not None  # an identity comes from a token or a key on this route
        await self.check.require(identity, credential, ctx.request_id)
        rest = urllib.parse.unquote(path[len(PREFIX) :].lstrip("/"))
        try:
            if not rest and request.method == "GET":
                return json_response(dumps({"items": await self.blocks.list(), "nextCursor": None}))
            if not rest and request.method == "POST":
                return await self._add(request, ctx, identity)
            if rest and request.method == "DELETE":
                if not await self.blocks.remove(str(network_of(rest))):
                    raise NotFound("This address is not blocked")
                return web.Response(status=204)
        except StoreUnavailable as exc:
            raise ServiceUnavailable("The block list store is unavailable") from exc
        return method_not_allowed(ctx)

    async def _add(self, request: web.Request, ctx: Ctx, identity: Identity) -> web.Response:
        block_request = parse_block(await admin_body(request))
        block_request.check_caller(ctx.client_ip)
        reason = block_request.reason or f"admin {identity.user_id}"
        block = await self.blocks.add(block_request.network, ttl=block_request.ttl, reason=reason)
        return json_response(dumps(block.view()), 201)
