"""A minimal pipelined Redis client for the one command on the gateway's hot path.

Every request runs one EVALSHA. redis-py's asyncio client checks a connection out of a pool,
wraps it in timeouts and locks, and costs several hundred microseconds of Python per call on
this machine (measured: half the gateway's throughput). Here every caller writes its command
on ONE shared connection and awaits a future; replies come back in order (RESP pipelining),
parsed by hiredis. Commands issued in one turn of the event loop leave in one write (one
syscall for all the requests that reached the limiter together). A command that waits longer
than the timeout closes the connection, which fails every pending call with ConnectionError
so the limiter can fall back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast

import hiredis


class RedisReplyError(Exception):
    """Redis answered with an error (e.g. NOSCRIPT)."""


def bulk(arg: Any) -> bytes:
    """One argument in RESP (a bulk string); a command is ``array_head(n)`` and n of these."""
    data = arg if isinstance(arg, bytes) else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array_head(count: int) -> bytes:
    return b"*%d\r\n" % count


def _encode(args: tuple[Any, ...]) -> bytes:
    return array_head(len(args)) + b"".join(map(bulk, args))


class _Protocol(asyncio.Protocol):
    def __init__(self, pending: deque[tuple[asyncio.Future[Any], float]], loop: asyncio.AbstractEventLoop) -> None:
        self.pending = pending
        # The loop is kept, not looked up per command: asyncio.get_running_loop() checks the
        # process id, a getpid() syscall per call (~5 us a request here, strace and py-spy).
        self.loop = loop
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._out: list[bytes] = []

    def send(self, command: bytes) -> None:
        """Queue a command; the queue is written once, when this turn of the loop ends."""
        if not self._out:
            self.loop.call_soon(self._flush)
        self._out.append(command)

    def _flush(self) -> None:
        data, self._out = b"".join(self._out), []
        # A lost connection has already failed the futures of what was queued on it.
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future, _ = self.pending.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisReplyError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"redis connection lost: {exc or 'closed'}"))


class RedisPipe:
    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        self.url = url
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            self._pending = deque()
            pending = self._pending
            parsed = urllib.parse.urlsplit(self.url)
            factory = lambda: _Protocol(pending, loop)  # noqa: E731 - one closure per connection
            if parsed.scheme == "unix":
                connect = loop.create_unix_connection(factory, parsed.path)
            else:
                tls = ssl.create_default_context() if parsed.scheme == "rediss" else None
                connect = loop.create_connection(factory, parsed.hostname or "127.0.0.1", parsed.port or 6379, ssl=tls)
            _, protocol = await asyncio.wait_for(connect, self.timeout)
            self._protocol = protocol
            await self._handshake(parsed)
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = loop.create_task(self._watch())
            return protocol

    async def _handshake(self, parsed: urllib.parse.SplitResult) -> None:
        if parsed.password:
            user = urllib.parse.unquote(parsed.username) if parsed.username else None
            secret = urllib.parse.unquote(parsed.password)
            await self.call(*(("AUTH", user, secret) if user else ("AUTH", secret)))
        query_db = urllib.parse.parse_qs(parsed.query).get("db", [""])[0]
        db = parsed.path.lstrip("/") if parsed.scheme != "unix" else query_db
        if db and db != "0":
            await self.call("SELECT", db)

    async def call(self, *args: Any) -> Any:
        return await self.send(_encode(args))

    def send(self, command: bytes) -> Awaitable[Any]:
        """An encoded command (``encode``); awaiting the result gives its reply. A plain function
        returning the future while connected: no coroutine to create and cross per request."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return self._connect_and_send(command)
        future: asyncio.Future[Any] = protocol.loop.create_future()
        self._pending.append((future, time.monotonic()))
        protocol.send(command)
        return future

    async def _connect_and_send(self, command: bytes) -> Any:
        await self._connect()
        return await self.send(command)

    async def _watch(self) -> None:
        # One timer for all calls instead of one per call: the oldest pending command decides.
        while True:
            await asyncio.sleep(self.timeout / 4)
            protocol = self._protocol
            if protocol is None or protocol.lost or not self._pending:
                continue
            if time.monotonic() - self._pending[0][1] > self.timeout and protocol.transport is not None:
                protocol.transport.abort()  # fails every pending call: Redis is not answering

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
            await asyncio.sleep(0)  # let connection_lost run before the loop may close
        self._protocol = None
