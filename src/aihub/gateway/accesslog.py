"""The gateway's access log and request metrics: one JSON line per request, written once per
event-loop turn.

structlog's chain (context merge, level, ISO timestamp, redaction, JSON, ``print(flush=True)``)
cost ~25 us and one ``write`` syscall per request, measured under wrk with py-spy and
``strace -c``. The access line has fixed fields, none of them secret (never the query or a
header), so it skips the chain: it is rendered with orjson into a buffer, and the buffer goes
out in one write when the loop turn ends (``call_soon``), as the Redis commands of a turn go
out in one pipeline. The lines keep the shape of every other log line (``event``, ``level``,
``timestamp``, then the fields); the timestamp is taken once per turn.

The metrics are counted for every request; the line is written unless the access log is off
(or below the log level), and never for a routine answer on a polled path (``/health``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from aihub.gateway import metrics
from aihub.gateway.context import Ctx
from aihub.gateway.health import PATHS as _QUIET

_FLUSH_AT = 256 * 1024  # a burst larger than this is written at once, not held for the turn
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLog:
    def __init__(self, fd: int | None = None, *, enabled: bool = True) -> None:
        self.enabled = enabled  # False: metrics only
        self._fd = fd
        self._lines: list[bytes] = []
        self._size = 0
        self._head: bytes | None = None  # the line's fixed start with this turn's timestamp
        self._scheduled = False
        # Set by ``bind`` on the serving loop: asyncio.get_running_loop() costs a getpid()
        # syscall per call (it checks the process), once per turn here otherwise.
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def observe(self, request: web.Request, ctx: Ctx, status: int) -> None:
        """At the end of every request, once its status is known."""
        elapsed = time.perf_counter() - ctx.started
        method = request.method if request.method in _KNOWN_METHODS else "OTHER"
        metrics.observe(ctx.route, method, status, elapsed)
        if not self.enabled or (ctx.route in _QUIET and status < 400):
            return
        self.write(
            {
                "service": "gateway",
                "request_id": ctx.request_id,
                "method": method,
                "path": request.path,  # never the query: it may carry an access_token
                "route": ctx.route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "user_id": ctx.user_id,
                "api_key_id": ctx.api_key_id,
                "client_ip": ctx.client_ip,
                "upstream": ctx.hop.instance,
                "bytes": ctx.hop.bytes_out,
            }
        )

    def _target(self) -> int:
        if self._fd is None:
            # Whatever stdout is now (tests swap it): flush what Python buffered first, so lines
            # written by print and by structlog keep their order with ours.
            sys.stdout.flush()
            return sys.stdout.fileno()
        return self._fd

    def write(self, fields: dict[str, Any]) -> None:
        """One line: ``event``, ``level`` and ``timestamp`` first, then ``fields`` (none of them
        named so) in their order."""
        head = self._head
        if head is None:
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            head = self._head = b'{"event":"request","level":"info","timestamp":"%s",' % stamp.encode()
        # The fields rendered alone, their "{" replaced by the fixed head: no merged dict per line.
        body = orjson.dumps(fields, default=str)
        line = head + body[1:] if len(body) > 2 else head[:-1] + b"}"
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= _FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            (self._loop or asyncio.get_running_loop()).call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._head = None
        if not self._lines:
            return
        data = b"\n".join(self._lines) + b"\n"
        self._lines.clear()
        self._size = 0
        with contextlib.suppress(OSError, ValueError):  # stdout gone: the request is served anyway
            fd = self._target()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
