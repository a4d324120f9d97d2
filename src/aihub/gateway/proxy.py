"""HTTP passthrough on the aiohttp client: headers rewritten, bodies streamed both ways.

A small response with a known length is read whole (one write is cheaper); anything else,
an SSE stream, a chunked or a large body, is relayed chunk by chunk as it arrives. A request
body is relayed the same way and counted as it flows, so an oversized upload is cut at the
limit (413) instead of being held in memory or reaching the upstream whole.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from aihub.gateway.balancer import Group
from aihub.gateway.routing import Route
from aihub.kit.errors import AppError
from aihub.kit.serve import DRAINING_HEADER

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway itself, or recomputed for the hop it makes.
# Expect is answered by our own server; forwarding it would make the upstream wait for a 100.
_REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "date", "server", DRAINING_HEADER.lower()}
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_SMALL_BODY = 65_536  # read whole up to this size; stream above it
_CHUNK = 65_536


class BadGateway(AppError):
    status_code, code, message = 502, "BAD_GATEWAY", "The upstream service failed"


class NoUpstream(AppError):
    status_code, code, message = 503, "SERVICE_UNAVAILABLE", "No healthy instance of the upstream service"


class GatewayTimeout(AppError):
    status_code, code, message = 504, "GATEWAY_TIMEOUT", "The upstream service timed out"


class PayloadTooLarge(AppError):
    status_code, code, message = 413, "PAYLOAD_TOO_LARGE", "The request body is too large"


class UnsupportedEncoding(AppError):
    status_code, code = 415, "UNSUPPORTED_MEDIA_TYPE"
    message = "Content-Encoding must be gzip or deflate, or the body sent uncompressed"


class BadEncoding(AppError):
    status_code, code = 400, "INVALID_CONTENT_ENCODING"
    message = "The request body does not decode as its Content-Encoding says"


# zlib's wbits per content coding: 16 + 15 reads the gzip wrapper, 15 the zlib one (RFC 9110's
# "deflate"). Nothing else is decoded: one well-understood decompressor, bounded below.
_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(slots=True)
class Forwarded:
    """What the access log wants to know about the hop."""

    instance: str | None = None
    bytes_out: int = 0


@functools.lru_cache(maxsize=4096)
def _url(text: str) -> URL:
    # yarl parses even an encoded URL; an API's paths repeat, so most requests find theirs here.
    return URL(text, encoded=True)


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    value = headers.get("Connection")
    if value is None:
        return frozenset()  # most requests under HTTP/1.1 keep-alive name nothing
    return _tokens(value)


@functools.lru_cache(maxsize=256)
def _tokens(value: str) -> frozenset[str]:
    # The few values seen ("keep-alive", "close", "Upgrade") repeat on every response. Names
    # that are hop-by-hop anyway are dropped with or without the token: usually none is left.
    return frozenset(h.strip().lower() for h in value.split(",") if h.strip()) - HOP_BY_HOP


# Whether a header, by its name as received, is forwarded (before any Connection token): the
# same few names arrive on every request, so each is decided once instead of lowered and
# looked up on every one. Bounded: a client sending ever new names only stops the caching.
_MAX_NAMES = 4096
_REQUEST_NAMES: dict[str, bool] = {}
_RESPONSE_NAMES: dict[str, int] = {}  # 0 dropped, 1 kept, 2 kept after a Location rewrite
_DROP, _KEEP, _LOCATION = 0, 1, 2


def _request_name(name: str) -> bool:
    lower = name.lower()
    keep = not (lower in _REQUEST_DROP or lower.startswith("x-user-") or lower == "x-api-key-id")
    if len(_REQUEST_NAMES) < _MAX_NAMES:
        _REQUEST_NAMES[name] = keep
    return keep


def _response_name(name: str) -> int:
    lower = name.lower()
    kind = _DROP if lower in _RESPONSE_DROP else _LOCATION if lower == "location" else _KEEP
    if len(_RESPONSE_NAMES) < _MAX_NAMES:
        _RESPONSE_NAMES[name] = kind
    return kind


def upstream_headers(
    headers: CIMultiDictProxy[str],
    *,
    peer: str,
    peer_trusted: bool,
    scheme: str,
    host: str,
    request_id: str,
    user_id: str | None,
    role: str | None,
) -> CIMultiDict[str]:
    named = _connection_tokens(headers)
    known = _REQUEST_NAMES
    kept: list[tuple[str, str]] = []
    for name, value in headers.items():
        keep = known.get(name)
        if keep is None:
            keep = _request_name(name)
        if keep and not (named and name.lower() in named):
            kept.append((name, value))
    # The standard chain: what a trusted proxy sent, plus the address that connected to us.
    # An untrusted client's own X-Forwarded-For is dropped, never extended. The names added
    # here were all dropped above: appending them sets them. One multidict built from the list.
    prior = headers.get("X-Forwarded-For") if peer_trusted else None
    kept.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    kept.append(("X-Forwarded-Proto", (headers.get("X-Forwarded-Proto") if peer_trusted else None) or scheme))
    kept.append(("X-Forwarded-Host", (headers.get("X-Forwarded-Host") if peer_trusted else None) or host))
    kept.append(("X-Request-Id", request_id))
    if user_id is not None:
        kept.append(("X-User-Id", user_id))
        kept.append(("X-User-Role", role or ""))
    return CIMultiDict(kept)


def response_headers(headers: CIMultiDictProxy[str], instance_url: str = "", prefix: str = "") -> list[tuple[str, str]]:
    """``instance_url`` and ``prefix``: a ``Location`` naming the instance itself (a framework
    builds it from the Host the gateway sent) becomes a path the client reaches through the
    gateway, with the prefix a stripping route removed put back: the internal address never
    leaves, and the client is never sent around the gateway.

    A list, which the response turns into its own multidict (one copy, not two)."""
    named = _connection_tokens(headers)
    known = _RESPONSE_NAMES
    out: list[tuple[str, str]] = []
    for name, value in headers.items():  # items() keeps repeated headers such as Set-Cookie
        kind = known.get(name)
        if kind is None:
            kind = _response_name(name)
        if kind == _DROP or (named and name.lower() in named):
            continue
        if kind == _LOCATION and instance_url and value.startswith(instance_url):
            rest = value[len(instance_url) :]
            if not rest or rest[0] in "/?#":
                value = prefix + (rest if rest.startswith("/") else "/" + rest)
        out.append((name, value))
    return out


@functools.lru_cache(maxsize=64)
def _timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    # One object per (connect, read) pair rather than one per request.
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)


def is_idempotent(request: web.Request) -> bool:
    return request.method in _IDEMPOTENT or "Idempotency-Key" in request.headers


@dataclass(slots=True)
class _Upload:
    limit: int
    received: int = 0
    too_large: bool = False


async def _stream_upload(request: web.Request, upload: _Upload) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(_CHUNK):
        upload.received += len(chunk)
        if upload.received > upload.limit:
            upload.too_large = True
            raise PayloadTooLarge
        yield chunk


def is_encoded(request: web.Request) -> bool:
    coding = request.headers.get("Content-Encoding")
    return coding is not None and coding.strip().lower() != "identity"


async def read_decoded(request: web.Request, limit: int) -> bytes:
    """A compressed request body, decompressed, with ``limit`` applied to the DECOMPRESSED size.

    The gateway's server does not decompress (``auto_decompress`` off): here each step asks
    zlib for at most what is left under the limit, so a 10 KB body that expands to 10 MB
    costs ``limit`` bytes of memory and answers 413, and the upstream receives a plain body
    whose Content-Length is its own (the caller drops Content-Encoding and Content-Length).
    """
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    wbits = _CODINGS.get(coding)
    if wbits is None:
        raise UnsupportedEncoding
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(_CHUNK):
            data = chunk
            while data:
                if inflater.eof:  # a chunk after the end of the stream
                    raise BadEncoding("The request body continues after its compressed stream ends")
                out = inflater.decompress(data, limit - size + 1)
                size += len(out)
                if size > limit:
                    raise PayloadTooLarge
                parts.append(out)
                data = inflater.unconsumed_tail
            if inflater.unused_data:
                raise BadEncoding("The request body continues after its compressed stream ends")
        if not inflater.eof:
            raise BadEncoding("The compressed request body is cut short")
    except zlib.error as exc:
        raise BadEncoding from exc
    return b"".join(parts)


async def _request_body(
    request: web.Request, route: Route, upload: _Upload, encoded: bool
) -> bytes | AsyncIterator[bytes] | None:
    if not request.body_exists:
        return None
    if encoded:
        return await read_decoded(request, route.max_body_bytes)
    length = request.content_length
    if length is not None:
        if length > route.max_body_bytes:
            raise PayloadTooLarge
        if length <= _SMALL_BODY:
            return await request.read()  # replayable, so an idempotent request can be retried
    return _stream_upload(request, upload)


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    group: Group,
    route: Route,
    target: str,
    headers: CIMultiDict[str],
    info: Forwarded,
    connect_timeout: float,
) -> web.StreamResponse:
    """Send the request to one healthy instance and relay the answer; ``target`` is the
    already-encoded path and query.

    One retry on another instance, as nginx's ``proxy_next_upstream error`` does: after a
    connect failure for any request whose body we still hold (the upstream never saw it), and
    after a connection that closed before any answer (a kept-alive connection the upstream
    shut while stopping) for an idempotent one only, since that upstream may have acted on it.
    """
    upload = _Upload(route.max_body_bytes)
    encoded = is_encoded(request)
    body = await _request_body(request, route, upload, encoded)
    if encoded:
        # Decoded above: the upstream gets the plain body, its own length and no coding.
        headers.popall("Content-Encoding", None)
        headers.popall("Content-Length", None)
    timeout = _timeout(connect_timeout, route.timeout)
    replayable = not hasattr(body, "__aiter__")
    instance = group.pick()
    if instance is None:
        raise NoUpstream
    for attempt in (0, 1):
        info.instance = instance.url
        with instance.lease:  # released on every way out, a retry's ``continue`` included
            try:
                upstream = await session.request(
                    request.method,
                    _url(instance.url + target),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=timeout,
                    auto_decompress=False,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                group.failure(instance)
                other = group.pick(exclude=instance) if replayable and attempt == 0 else None
                if other is None:
                    if isinstance(exc, aiohttp.ConnectionTimeoutError):
                        raise GatewayTimeout from exc
                    raise BadGateway("The upstream service refused the connection") from exc
                instance = other
                continue
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                group.failure(instance)
                raise GatewayTimeout from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if upload.too_large:
                    raise PayloadTooLarge from exc
                if not (replayable and attempt == 0 and is_idempotent(request)):
                    raise BadGateway from exc
                instance = group.pick(exclude=instance) or instance  # a fresh connection at least
                continue
            except (aiohttp.ClientError, OSError, PayloadTooLarge) as exc:
                if upload.too_large:
                    raise PayloadTooLarge from exc
                raise BadGateway from exc
            try:
                group.success(instance)
                if DRAINING_HEADER in upstream.headers:
                    group.draining(instance)
                return await _relay(request, upstream, info, instance.url, route.strip)
            finally:
                upstream.release()
    raise NoUpstream  # pragma: no cover - the loop always returns or raises


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, info: Forwarded, instance_url: str, prefix: str
) -> web.StreamResponse:
    headers = response_headers(upstream.headers, instance_url, prefix)
    length = upstream.content_length
    streaming = length is None or length > _SMALL_BODY or request.method == "HEAD"
    if not streaming:
        try:
            data = await upstream.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BadGateway("The upstream response was cut short") from exc
        info.bytes_out = len(data)
        return web.Response(status=upstream.status, reason=upstream.reason, body=data, headers=headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            info.bytes_out += len(chunk)
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError):
        # Headers are gone already: cut the client's connection so it sees a broken body,
        # never a truncated one that looks complete.
        if request.transport is not None:
            request.transport.close()
        return response
    except ConnectionError:
        return response  # the client went away; releasing the upstream is all that is left
    await response.write_eof()
    return response
