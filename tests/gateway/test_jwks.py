"""Key rotation end to end: the real auth service signs, the gateway verifies with its JWKS."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt as pyjwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from fastapi import FastAPI, Request, Response

from aihub.config import Settings
from aihub.keys import SigningKey, thumbprint
from aihub.kit.jwks import JwksClient
from aihub.kit.jwt import TokenCodec
from aihub.kit.runtime import Runtime
from tests.conftest import _auth_app, free_port
from tests.gateway.conftest import GatewayFactory, Upstream, bearer, gateway_settings
from tests.kit.test_jwks import Clock, forged

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def private_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclasses.dataclass
class AuthServer:
    """The auth app on a fixed loopback port, restartable with other keys (a rotation is a
    restart with a new AIHUB_JWT_PRIVATE_KEY and the old public key in AIHUB_JWT_PUBLIC_KEYS).
    Counts the requests its JWKS endpoint answers."""

    port: int
    jwks_hits: int = 0
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None
    runtime: Runtime | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _app(self, runtime: Runtime) -> FastAPI:
        app: FastAPI = _auth_app(runtime)

        @app.middleware("http")
        async def count(request: Request, call_next: Any) -> Response:
            if request.url.path == "/.well-known/jwks.json":
                self.jwks_hits += 1
            response: Response = await call_next(request)
            return response

        return app

    async def start(self, settings: Settings) -> None:
        self.runtime = Runtime.build(settings)
        config = uvicorn.Config(
            self._app(self.runtime),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="none",
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
        if self.runtime is not None:
            await self.runtime.close()
        self.server = self.task = self.runtime = None


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    server = AuthServer(free_port())
    yield server
    await server.stop()


def sign(key: PrivateKey, sub: str) -> str:
    """A token as auth would sign it with ``key``, made here so it is not in any cache."""
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "EdDSA"
    signing = SigningKey(thumbprint(key.public_key()), algorithm, key)
    issuer = TokenCodec(
        secret="unused", issuer="aihub-auth", audience="aihub", leeway=10, access_ttl=900, signing_key=signing
    )
    return issuer.issue(sub=sub, role="user")


async def me(http: aiohttp.ClientSession, gateway: str, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(gateway + "/api/users/me", headers=bearer(token)) as resp:
        return resp.status, await resp.json()


async def ready(http: aiohttp.ClientSession, gateway: str) -> tuple[int, dict[str, Any]]:
    async with http.get(gateway + "/health/ready") as resp:
        return resp.status, await resp.json()


async def test_key_rotation_through_the_gateway(
    pg_settings: Settings,
    auth_server: AuthServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    key_a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_b = ed25519.Ed25519PrivateKey.generate()
    kid_a, kid_b = thumbprint(key_a.public_key()), thumbprint(key_b.public_key())
    base = pg_settings.model_dump()
    signs_a = Settings(**{**base, "jwt_private_key": private_pem(key_a)})
    signs_b = Settings(**{**base, "jwt_private_key": private_pem(key_b), "jwt_public_keys": public_pem(key_a)})

    jwks_url = auth_server.url + "/.well-known/jwks.json"
    settings = gateway_settings(
        upstreams,
        auth_url=auth_server.url,
        jwks_url=jwks_url,
        gateway_ban_after_auth_failures=0,  # the forged tokens below would ban the test's address
    )
    clock = Clock()  # the refetch interval passes when the test says so, not by waiting
    client = JwksClient(jwks_url, refresh_seconds=3600, refetch_interval=60, timeout=1.0, clock=clock)
    codec = dataclasses.replace(TokenCodec.from_settings(settings), jwks=client)
    assert not codec.accept_hs256 and not codec.public_keys  # every key comes from the JWKS
    try:
        # The gateway starts before auth: it does not fail, it is not ready until the keys load.
        gw = await start_gateway(settings, codec=codec)
        status, body = await ready(http, gw.url)
        assert (status, body["status"], body["checks"]["jwks"]) == (503, "down", "loading")
        await auth_server.start(signs_a)
        for _ in range(300):
            status, body = await ready(http, gw.url)
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert body["checks"]["jwks"] == "ok" and status == 200
        assert auth_server.jwks_hits == 1

        # Auth signs with key A; the gateway verifies with the key it loaded.
        account = {"email": "rotation@example.com", "password": "long-enough-1"}
        async with http.post(gw.url + "/api/auth/register", json=account) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(gw.url + "/api/auth/login", json=account) as resp:
            token_a = (await resp.json())["accessToken"]
        assert pyjwt.get_unverified_header(token_a)["kid"] == kid_a
        status, echoed = await me(http, gw.url, token_a)
        assert (
            status == 200
            and echoed["headers"]["X-User-Id"] == pyjwt.decode(token_a, options={"verify_signature": False})["sub"]
        )

        # Auth rotates to key B. Its first token reaches the gateway as a burst of requests:
        # unknown kid, one JWKS fetch for all of them, every one accepted.
        await auth_server.stop()
        await auth_server.start(signs_b)
        async with http.post(gw.url + "/api/auth/login", json=account) as resp:
            assert resp.status == 200, await resp.text()
            token_b = (await resp.json())["accessToken"]
        assert pyjwt.get_unverified_header(token_b)["kid"] == kid_b
        clock.now += 61
        results = await asyncio.gather(*(me(http, gw.url, token_b) for _ in range(10)))
        assert {status for status, _ in results} == {200}
        assert auth_server.jwks_hits == 2
        # Tokens of the previous key still pass (it is still published) without a fetch.
        assert (await me(http, gw.url, sign(key_a, "someone")))[0] == 200
        assert auth_server.jwks_hits == 2

        # Forged kids: refused with 401 INVALID_TOKEN; within the interval they fetch nothing,
        # after it a whole burst makes exactly one request.
        async def forged_burst() -> None:
            results = await asyncio.gather(*(me(http, gw.url, forged(uuid.uuid4().hex)) for _ in range(10)))
            assert {(status, body["code"]) for status, body in results} == {(401, "INVALID_TOKEN")}

        await forged_burst()
        assert auth_server.jwks_hits == 2
        clock.now += 61
        await forged_burst()
        assert auth_server.jwks_hits == 3
        await forged_burst()
        assert auth_server.jwks_hits == 3

        # Auth goes down during a refetch: known kids still pass, unknown kids get 401, no 500.
        await auth_server.stop()
        clock.now += 61
        await forged_burst()
        for name, key in (("a", key_a), ("b", key_b)):
            assert (await me(http, gw.url, sign(key, f"fresh-{name}")))[0] == 200
        status, body = await ready(http, gw.url)
        assert status == 200 and body["checks"]["jwks"] == "stale"
    finally:
        await client.close()
