"""WebSocket passthrough: the upstream socket is opened first, then the client's is accepted.

Opening upstream first means a refused upstream answers 502 as plain HTTP instead of an
accepted socket that closes at once. The upgrade is a GET: after a connect failure (refused, or
no handshake within the connect timeout) it is tried once more on another healthy instance,
as the proxy does for idempotent requests. Text and binary frames flow both ways; a close on one
side closes the other with the same code; pings are answered on each hop; a message over the
size limit closes with 1009; a connection silent in both directions for the idle timeout
closes with 1001, and so does every connection when the gateway shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from aihub.gateway.balancer import Group, Instance
from aihub.gateway.proxy import BadGateway, Forwarded, GatewayTimeout, NoUpstream

# Codes a peer may not send in a close frame (RFC 6455 §7.4.1); replaced on the other hop.
_RESERVED = {1005: 1000, 1006: 1011, 1015: 1011}
_WS_DROP = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}


def _close_code(code: int | None) -> int:
    if code is None:
        return 1000
    return _RESERVED.get(code, code)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    activity: list[float],
) -> None:
    async for message in source:
        activity[0] = time.monotonic()
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.ERROR:
            break


async def _idle_watch(activity: list[float], idle: float) -> None:
    while True:
        remaining = activity[0] + idle - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(remaining)


async def _connect(
    session: aiohttp.ClientSession,
    group: Group,
    target: str,
    headers: CIMultiDict[str],
    protocols: list[str],
    info: Forwarded,
    max_message: int,
    connect_timeout: float,
) -> tuple[Instance, aiohttp.ClientWebSocketResponse]:
    instance = group.pick()
    if instance is None:
        raise NoUpstream
    for attempt in (0, 1):
        info.instance = instance.url
        try:
            # The session's own timeout does not cover ws_connect's handshake: bound it here.
            async with asyncio.timeout(connect_timeout):
                upstream = await session.ws_connect(
                    URL(instance.url + target, encoded=True),
                    headers=headers,
                    protocols=protocols,
                    max_msg_size=max_message,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise BadGateway(f"The upstream refused the WebSocket upgrade ({exc.status})") from exc
        except (aiohttp.ClientConnectorError, TimeoutError) as exc:
            group.failure(instance)
            other = group.pick(exclude=instance) if attempt == 0 else None
            if other is None:
                if isinstance(exc, TimeoutError):
                    raise GatewayTimeout from exc
                raise BadGateway("The upstream service refused the connection") from exc
            instance = other
            continue
        except (aiohttp.ClientError, OSError) as exc:
            group.failure(instance)
            raise BadGateway("The upstream service refused the connection") from exc
        group.success(instance)
        return instance, upstream
    raise NoUpstream  # pragma: no cover - the loop always returns or raises


async def proxy_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    group: Group,
    target: str,
    headers: CIMultiDict[str],
    info: Forwarded,
    *,
    max_message: int,
    idle: float,
    connect_timeout: float,
    going_away: asyncio.Event | None = None,
) -> web.WebSocketResponse:
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    forwarded = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _WS_DROP)
    instance, upstream = await _connect(
        session, group, target, forwarded, protocols, info, max_message, connect_timeout
    )
    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        max_msg_size=max_message,
        heartbeat=min(30.0, idle / 2),
        autoping=True,
    )
    try:
        with instance.lease:  # counted while the connection lasts; released before the close below
            await client.prepare(request)
            activity = [time.monotonic()]
            tasks = {
                asyncio.ensure_future(_pump(client, upstream, activity)): "client",
                asyncio.ensure_future(_pump(upstream, client, activity)): "upstream",
                asyncio.ensure_future(_idle_watch(activity, idle)): "idle",
                asyncio.ensure_future((going_away or asyncio.Event()).wait()): "shutdown",
            }
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            first = tasks[next(iter(done))]
            if first == "client":
                await upstream.close(code=_close_code(client.close_code))
            elif first == "upstream":
                await client.close(code=_close_code(upstream.close_code))
            else:
                reason = b"idle timeout" if first == "idle" else b"gateway shutting down"
                await asyncio.gather(
                    upstream.close(code=1001, message=reason),
                    client.close(code=1001, message=reason),
                    return_exceptions=True,
                )
    finally:
        if not upstream.closed:
            await upstream.close()
    return client
