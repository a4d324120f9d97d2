"""The gateway's HTTP server: aiohttp's, with its own answer to requests that do not parse.

A request aiohttp cannot parse (a bare LF, Content-Length with Transfer-Encoding, bad header
bytes, an oversized line) never reaches the application: aiohttp's ``handle_error`` answers
it, in plain text, without the security headers, with ``Server: Python/… aiohttp/…``, and with
the parser's message, which quotes the offending request bytes (an ``Authorization`` header
among them). Here that answer is the one error shape with the gateway's headers, a fixed
message per status, and a log line that names the error class only, never its text.

It also takes the router out of the hot path. The gateway has one catch-all route, so
``Application._handle`` resolving it (a regex match, a match-info object built, joined to
the app and frozen, per request: ~4 % of a request's CPU under wrk, py-spy) always finds the
same thing. The runner resolves it once and hands every request that frozen match info
(it carries no per-request data: the catch-all's ``tail`` is never read) before calling the
gateway's handler, so the response signals (``on_response_prepare``: our headers) still
run. Requests with ``Expect`` take the application's own path (it answers 100-continue).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from aihub.gateway.headers import add_security
from aihub.kit.errors import error_body
from aihub.kit.middleware import pick_request_id

log = structlog.get_logger("aihub.gateway")

# aiohttp reports every parse failure (oversized lines and headers included) as 400, and a
# body over its size limit as 413.
_PARSER_ERRORS = {
    400: ("BAD_REQUEST", "The request is not valid HTTP"),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large"),
}


def parser_error_response(status: int) -> web.Response:
    if status not in _PARSER_ERRORS:
        status = 400 if 400 <= status < 500 else 500
    code, message = _PARSER_ERRORS.get(status, ("INTERNAL_ERROR", "Something went wrong on our side"))
    request_id = pick_request_id(None)  # the client's own header is not to be trusted here
    response = web.Response(status=status, body=error_body(code, message, request_id), content_type="application/json")
    headers = response.headers
    headers["X-Request-Id"] = request_id
    headers["Server"] = "aihub"
    add_security(headers, proxied=False)
    response.force_close()  # the stream is out of sync: nothing more is read from it
    return response


class _Handler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning("http_parse_error", status=status, error=type(exc).__name__ if exc else None, client=request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        return parser_error_response(status)


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests as described above."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server and state; only its connection class differs
        routes = list(self.app.router.routes())
        if len(routes) == 1 and not self.app.middlewares:
            server.request_handler = _direct(self.app, routes[0], server.request_handler)
        return server


def _direct(app: web.Application, route: web.AbstractRoute, slow: Any) -> Any:
    match_info = UrlMappingMatchInfo({"tail": ""}, route)
    match_info.add_app(app)
    match_info.freeze()
    handler = route.handler

    # Not a coroutine itself: it returns the handler's, which the server awaits. Every
    # coroutine level is crossed again each time the request resumes after an await.
    def handle(request: web.Request) -> Awaitable[web.StreamResponse]:
        if hdrs.EXPECT in request.headers:
            return slow(request)  # type: ignore[no-any-return]
        request._match_info = match_info
        return handler(request)

    return handle
