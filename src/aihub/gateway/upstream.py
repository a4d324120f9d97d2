"""The gateway's client session to its upstreams, with a cheaper read timeout.

aiohttp enforces ``sock_read`` (a route's ``timeout``: the longest silence allowed from the
upstream) by cancelling and re-creating a loop timer each time it starts waiting and each time
data arrives, and cancelling it again at the end of every response: two timers made and two
cancelled per proxied request, ~8-15 us of the gateway's CPU under wrk (py-spy:
``ResponseHandler._reschedule_timeout``). The floor proxy in bench/gateway.py pays a similar
price for its total timeout.

``_UpstreamProtocol`` keeps the same rule with a lazy timer: a reschedule only moves a
deadline (a float), and the one timer armed per connection, when it fires, re-arms itself at
the current deadline if there is one and it has not passed, or reports the timeout exactly
as aiohttp does (``_on_read_timeout``). A kept-alive connection serving request after request
therefore arms about one timer per ``timeout`` seconds instead of two per request. The timer
is cancelled for real when the connection goes away, so a closed connection is not kept alive
by it.

This subclasses aiohttp's private ``ResponseHandler`` and sets the connector's private
``_factory``; ``tests/gateway/test_upstream.py`` fails if either changes shape, and proves
the timeout still fires (504) and is still reset by data that keeps arriving.
"""

from __future__ import annotations

import asyncio
import functools
from typing import cast

import aiohttp
from aiohttp.client_proto import ResponseHandler


class _UpstreamProtocol(ResponseHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._read_deadline: float | None = None  # None: no read is being timed
        self._armed_for = 0.0  # when the armed timer fires

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        if not timeout:
            self._read_deadline = None
            return
        deadline = self._read_deadline = self._loop.time() + timeout
        handle = self._read_timeout_handle
        if handle is None or deadline < self._armed_for:  # none armed, or armed too late (a shorter timeout)
            if handle is not None:
                handle.cancel()
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        self._armed_for = deadline
        self._read_timeout_handle = self._loop.call_at(deadline, self._read_timer)

    def _drop_timeout(self) -> None:
        self._read_deadline = None  # the armed timer, if any, finds nothing to time and stops

    def _read_timer(self) -> None:
        self._read_timeout_handle = None
        deadline = self._read_deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:  # data came since: the silence started later
            self._arm(deadline)
            return
        self._read_deadline = None
        self._on_read_timeout()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()

    def close(self) -> None:
        super().close()
        self._cancel_timer()

    def abort(self) -> None:
        super().abort()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        self._read_deadline = None
        if self._read_timeout_handle is not None:
            self._read_timeout_handle.cancel()
            self._read_timeout_handle = None


def connector(loop: asyncio.AbstractEventLoop) -> aiohttp.TCPConnector:
    """A pooled connector (no limit, 30 s keep-alive) whose connections time reads lazily."""
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
    conn._factory = cast("functools.partial[ResponseHandler]", functools.partial(_UpstreamProtocol, loop=loop))
    return conn


def session(loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
    # No cookie jar: cookies belong to the clients, not to the gateway's shared session.
    return aiohttp.ClientSession(connector=connector(loop), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
