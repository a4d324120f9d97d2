"""A webhook receiver on loopback that fails its first calls, and a Standard Webhooks verifier
written from the specification (not from aihub's code), so a test checks the real signature."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import LocalServer


@dataclass
class Receiver(LocalServer):
    port: int
    failures: int = 0  # answer this many calls with 500 first
    runner: Any = None
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown_timeout = 0.1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        if len(self.calls) <= self.failures:
            return web.Response(status=500, text="try later")
        self.delivered.set()
        return web.Response(status=204)

    async def wait(self, count: int, timeout: float = 20.0) -> None:
        async def enough() -> None:
            while len(self.calls) < count:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(enough(), timeout)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: base64(HMAC-SHA256(base64decode(secret without whsec_), "id.ts.body"))."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for item in headers["webhook-signature"].split(" "):
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False
