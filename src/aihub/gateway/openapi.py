"""One OpenAPI document for the whole system, served by the gateway at ``/openapi.json``.

Core and auth each publish their own schema; the gateway fetches them (lazily, cached, from a
healthy instance of each group), rewrites every path to the one a client calls through the
gateway (auth's ``/login`` becomes ``/api/auth/login``, following the route table), and adds
its own operations (health, readiness, metrics, the docs, the blocked-IP admin API).

An upstream whose schema cannot be fetched never makes this a 500: a copy fetched earlier is
served on (stale beats nothing); with no copy at all the document is served without that
service's operations and says so in ``x-aihub-unavailable`` and in ``info.description``.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from aihub import __version__
from aihub.gateway.balancer import Balancer, Instance
from aihub.gateway.routing import RouteTable
from aihub.kit.jsonutil import dumps, loads

log = structlog.get_logger("aihub.gateway.openapi")

# The upstream groups that are aihub services and publish /openapi.json (mcp is not ours).
SERVICE_GROUPS = ("auth", "core")
# Each service's operational endpoints: served on its own port only; through the gateway these
# paths are the gateway's own (see GATEWAY_PATHS).
SERVICE_LOCAL_PATHS = frozenset({"/health", "/health/ready", "/metrics"})
CACHE_SECONDS = 60.0  # schemas change only with a deploy; a minute bounds the upstream fetches
RETRY_SECONDS = 5.0  # after a failed fetch, at most one new attempt per this many seconds
FETCH_TIMEOUT_SECONDS = 5.0

_ERROR_REF = {"$ref": "#/components/schemas/GatewayError"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ADMIN_ERRORS = {
    "401": _error("UNAUTHORIZED, INVALID_TOKEN, TOKEN_EXPIRED or TOKEN_REVOKED"),
    "403": _error("FORBIDDEN: the caller lacks gateway:admin (checked live with core), or the address is blocked"),
    "429": _error("RATE_LIMIT_EXCEEDED"),
    "503": _error("SERVICE_UNAVAILABLE: the block list store, or core's permission check, is unavailable"),
}
_TAG = ["gateway"]

GATEWAY_COMPONENTS: dict[str, Any] = {
    "GatewayError": {
        "type": "object",
        "title": "GatewayError",
        "description": "The one error shape of every service.",
        "required": ["code", "message", "requestId"],
        "properties": {
            "code": {"type": "string", "examples": ["RATE_LIMIT_EXCEEDED"]},
            "message": {"type": "string"},
            "details": {},
            "requestId": {"type": "string"},
        },
    },
    "GatewayReadiness": {
        "type": "object",
        "title": "GatewayReadiness",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "checks": {
                "type": "object",
                "properties": {
                    "redis": {"type": "string", "enum": ["ok", "degraded", "memory"]},
                    "upstreams": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"healthy": {"type": "integer"}, "total": {"type": "integer"}},
                        },
                    },
                    "jwks": {"type": "string", "enum": ["loading", "ok", "stale"]},
                },
            },
        },
    },
    "BlockedIp": {
        "type": "object",
        "title": "BlockedIp",
        "required": ["ip", "reason", "expiresAt", "createdAt"],
        "properties": {
            "ip": {"type": "string", "description": "a network in CIDR form (one address: /32 or /128)"},
            "reason": {"type": "string"},
            "expiresAt": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "RFC 3339, UTC; null: no expiry",
            },
            "createdAt": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "RFC 3339, UTC; null for static denies",
            },
        },
    },
    "BlockedIpList": {
        "type": "object",
        "title": "BlockedIpList",
        "required": ["items", "nextCursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/BlockedIp"}},
            "nextCursor": {"type": "null"},
        },
    },
    "BlockIpRequest": {
        "type": "object",
        "title": "BlockIpRequest",
        "required": ["ip"],
        "properties": {
            "ip": {"type": "string", "description": "an IP address or a CIDR"},
            "ttlSeconds": {"type": "integer", "exclusiveMinimum": 0, "maximum": 315_360_000},
            "reason": {"type": "string", "maxLength": 500},
            "force": {
                "type": "boolean",
                "default": False,
                "description": "required to block every address or the caller's own",
            },
        },
    },
}

GATEWAY_PATHS: dict[str, Any] = {
    "/health": {
        "get": {
            "tags": _TAG,
            "summary": "Gateway liveness",
            "operationId": "gateway_health",
            "security": [],
            "responses": {"200": _json("The process answers", {"type": "object"})},
        }
    },
    "/health/ready": {
        "get": {
            "tags": _TAG,
            "summary": "Gateway readiness",
            "description": "Redis, the upstream groups and the key set; 503 when down (draining, the key set "
            "still loading, or no upstream group has a healthy instance).",
            "operationId": "gateway_ready",
            "security": [],
            "responses": {
                "200": _json("ok or degraded", {"$ref": "#/components/schemas/GatewayReadiness"}),
                "503": _json("down", {"$ref": "#/components/schemas/GatewayReadiness"}),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": _TAG,
            "summary": "Prometheus metrics",
            "description": "Only from the networks in AIHUB_METRICS_ALLOW.",
            "operationId": "gateway_metrics",
            "security": [],
            "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {}}}},
                "403": _error("FORBIDDEN: not from an allowed address"),
            },
        }
    },
    "/openapi.json": {
        "get": {
            "tags": _TAG,
            "summary": "This document",
            "operationId": "gateway_openapi",
            "security": [],
            "responses": {"200": _json("The merged OpenAPI document", {"type": "object"})},
        }
    },
    "/docs": {
        "get": {
            "tags": _TAG,
            "summary": "Interactive docs (Swagger UI, served offline)",
            "operationId": "gateway_docs",
            "security": [],
            "responses": {"200": {"description": "HTML page", "content": {"text/html": {"schema": {}}}}},
        }
    },
    "/api/gateway/blocked-ips": {
        "get": {
            "tags": _TAG,
            "summary": "List blocked networks",
            "description": "Static denies (AIHUB_GATEWAY_DENY_CIDRS) and blocks made through the API or by "
            "automatic bans. Needs gateway:admin.",
            "operationId": "gateway_list_blocked_ips",
            "security": [{"bearer": []}],
            "responses": {
                "200": _json("The blocks", {"$ref": "#/components/schemas/BlockedIpList"}),
                **_ADMIN_ERRORS,
            },
        },
        "post": {
            "tags": _TAG,
            "summary": "Block an address or network",
            "description": "Needs gateway:admin. Every gateway instance applies it within seconds.",
            "operationId": "gateway_block_ip",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BlockIpRequest"}}},
            },
            "responses": {
                "201": _json("Blocked", {"$ref": "#/components/schemas/BlockedIp"}),
                "400": _error("INVALID_JSON"),
                "413": _error("PAYLOAD_TOO_LARGE: a body over 16 KiB"),
                "415": _error("UNSUPPORTED_MEDIA_TYPE: a body that is not application/json"),
                "422": _error(
                    "VALIDATION_ERROR: ip missing or not an address/CIDR, ttlSeconds out of range, reason too long, "
                    "or a block covering every address or the caller's own without force"
                ),
                **_ADMIN_ERRORS,
            },
        },
    },
    "/api/gateway/blocked-ips/{ip}": {
        "delete": {
            "tags": _TAG,
            "summary": "Unblock an address or network",
            "description": "Needs gateway:admin. A CIDR's slash is percent-encoded (%2F).",
            "operationId": "gateway_unblock_ip",
            "security": [{"bearer": []}],
            "parameters": [{"name": "ip", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "204": {"description": "Unblocked"},
                "404": _error("NOT_FOUND: this address is not blocked"),
                "422": _error("VALIDATION_ERROR: not an address or CIDR"),
                **_ADMIN_ERRORS,
            },
        }
    },
}


def client_path(table: RouteTable, group: str, path: str) -> str | None:
    """The path a client calls through the gateway to reach ``path`` on ``group``; None when no
    route leads there (or the path is one of the service's own operational endpoints)."""
    if path in SERVICE_LOCAL_PATHS:
        return None
    for route in table.routes:
        if route.upstream != group:
            continue
        candidate = (route.strip.rstrip("/") + path) if route.strip else path
        hit = table.match(candidate)
        if hit is not None and hit.upstream == group and hit.upstream_path(candidate) == path:
            return candidate
    return None


def _walk_refs(node: Any, renamed: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                kind, _, name = value.rpartition("/")
                out[key] = f"{kind}/{renamed[name]}" if name in renamed and kind.startswith("#/components/") else value
            else:
                out[key] = _walk_refs(value, renamed)
        return out
    if isinstance(node, list):
        return [_walk_refs(item, renamed) for item in node]
    return node


def _operations(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
        if isinstance(item.get(method), dict):
            yield item[method]


def merge(services: dict[str, dict[str, Any]], table: RouteTable, unavailable: dict[str, str]) -> dict[str, Any]:
    """The merged document. ``services`` maps a group name to its own schema; ``unavailable``
    maps the groups left out to the reason."""
    components: dict[str, dict[str, Any]] = {
        "schemas": copy.deepcopy(GATEWAY_COMPONENTS),
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    }
    paths: dict[str, Any] = copy.deepcopy(GATEWAY_PATHS)
    operation_ids = {op["operationId"] for item in paths.values() for op in _operations(item)}
    tags: dict[str, dict[str, Any]] = {"gateway": {"name": "gateway", "description": "The gateway's own endpoints"}}
    for group, doc in services.items():
        # Same-named components that differ get the service's name in front, refs rewritten.
        renamed: dict[str, str] = {}
        for kind, entries in (doc.get("components") or {}).items():
            target = components.setdefault(kind, {})
            for name, value in entries.items():
                if name in target and target[name] != value:
                    renamed[name] = f"{group}_{name}"
        doc = _walk_refs(doc, renamed)
        for kind, entries in (doc.get("components") or {}).items():
            target = components.setdefault(kind, {})
            for name, value in entries.items():
                target[renamed.get(name, name)] = value
        for path, item in (doc.get("paths") or {}).items():
            public = client_path(table, group, path)
            if public is None:
                continue
            for op in _operations(item):  # item is a copy already (_walk_refs rebuilt the document)
                op_id = op.get("operationId")
                if op_id is not None:
                    if op_id in operation_ids:
                        op["operationId"] = op_id = f"{group}_{op_id}"
                    operation_ids.add(op_id)
                op["x-aihub-service"] = group
            paths.setdefault(public, {}).update(item)
        for tag in doc.get("tags") or []:
            tags.setdefault(tag["name"], tag)
    description = "Every operation as a client calls it through the gateway (port 3000)."
    if unavailable:
        missing = ", ".join(f"{group} ({reason})" for group, reason in sorted(unavailable.items()))
        description += f" INCOMPLETE: the schema of {missing} could not be fetched; its operations are missing."
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "aihub", "version": __version__, "description": description},
        "paths": paths,
        "components": components,
        "tags": list(tags.values()),
        # A token is optional document-wide (public routes need none); the docs page sends it when set.
        "security": [{"bearer": []}, {}],
    }
    if unavailable:
        merged["x-aihub-unavailable"] = [{"service": g, "reason": r} for g, r in sorted(unavailable.items())]
    return merged


def _well_formed(doc: Any) -> bool:
    """The shape merge() relies on, so a garbled upstream document is left out, not a 500."""
    if not isinstance(doc, dict):
        return False
    paths, components, tags = doc.get("paths"), doc.get("components") or {}, doc.get("tags") or []
    return (
        isinstance(paths, dict)
        and all(isinstance(item, dict) for item in paths.values())
        and isinstance(components, dict)
        and all(isinstance(entries, dict) for entries in components.values())
        and isinstance(tags, list)
        and all(isinstance(tag, dict) and isinstance(tag.get("name"), str) for tag in tags)
    )


@dataclass
class _Entry:
    doc: dict[str, Any] | None = None
    fetched_at: float = float("-inf")
    failed_at: float = float("-inf")
    error: str = ""


class SchemaCache:
    """The upstream schemas, fetched on demand and kept for ``CACHE_SECONDS``; one fetch at a
    time (a burst of requests waits on it), a failed refresh keeps the copy held."""

    def __init__(
        self,
        balancer: Balancer,
        table: RouteTable,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = FETCH_TIMEOUT_SECONDS,
    ) -> None:
        self.groups = [g for g in SERVICE_GROUPS if g in balancer.groups]
        self.balancer = balancer
        self.table = table
        self.clock = clock
        self.timeout = timeout
        self._entries = {group: _Entry() for group in self.groups}
        self._lock = asyncio.Lock()
        self._body: bytes | None = None
        self._partial = True

    async def document(self, session: aiohttp.ClientSession) -> tuple[bytes, bool]:
        """The merged document as JSON bytes, and whether it is complete."""
        async with self._lock:
            now = self.clock()
            due = [g for g, e in self._entries.items() if self._due(e, now)]
            if due:
                results = await asyncio.gather(*(self._fetch(session, g) for g in due))
                changed = False
                for group, (doc, error) in zip(due, results, strict=True):
                    entry = self._entries[group]
                    if doc is not None:
                        changed = changed or doc != entry.doc or entry.error != ""
                        entry.doc, entry.fetched_at, entry.error = doc, now, ""
                    else:
                        changed = changed or entry.doc is None
                        entry.failed_at, entry.error = now, error
                        log.warning("openapi_fetch_failed", group=group, reason=error, stale=entry.doc is not None)
                if changed or self._body is None:
                    self._rebuild()
            elif self._body is None:
                self._rebuild()
            assert self._body is not None
            return self._body, not self._partial

    def _due(self, entry: _Entry, now: float) -> bool:
        if now - entry.failed_at < RETRY_SECONDS and entry.failed_at > entry.fetched_at:
            return False
        return now - entry.fetched_at >= CACHE_SECONDS

    def _rebuild(self) -> None:
        services = {g: e.doc for g, e in self._entries.items() if e.doc is not None}
        unavailable = {g: e.error or "not fetched" for g, e in self._entries.items() if e.doc is None}
        self._body = dumps(merge(services, self.table, unavailable))
        self._partial = bool(unavailable)

    async def _fetch(self, session: aiohttp.ClientSession, group: str) -> tuple[dict[str, Any] | None, str]:
        instances = self.balancer.groups[group]
        tried: Instance | None = None
        error = "no instance"
        for _ in range(2):  # one other instance after a failure, as for proxied requests
            inst = instances.pick(exclude=tried)
            if inst is None:
                break
            tried = inst
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout)
                # identity: the gateway's client session does not decompress (it relays bodies as they are).
                headers = {"Accept-Encoding": "identity"}
                async with session.get(inst.url + "/openapi.json", timeout=timeout, headers=headers) as resp:
                    if resp.status != 200:
                        error = f"HTTP {resp.status}"
                        continue
                    doc = loads(await resp.read())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
                continue
            except ValueError:
                error = "not JSON"
                continue
            if _well_formed(doc):
                return doc, ""
            error = "not an OpenAPI document"
        return None, error
