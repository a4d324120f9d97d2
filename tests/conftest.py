"""Test fixtures: real PostgreSQL and Redis, plus the embedded SQLite and memory store.

Isolation: every test gets its own database, copied from a template migrated once per run
(PostgreSQL ``CREATE DATABASE … TEMPLATE``; a file copy for SQLite). Tests therefore exercise
real commits, real constraints and real concurrency, and never see each other's rows.
Under ``CI=true`` a test that needs PostgreSQL or Redis fails when they are unreachable.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from redis import Redis as SyncRedis
from redis.exceptions import RedisError

from aihub.auth.app import create_app as create_auth_app
from aihub.config import Settings
from aihub.core.app import create_app
from aihub.kit import migrate
from aihub.kit.db import create_engine
from aihub.kit.logging import configure_logging
from aihub.kit.runtime import Runtime

# The same JSON logging as production: it exercises the processors on every request, and a
# failure renders as a plain traceback (the development console renderer is slow under load).
configure_logging("info")

PG_ADMIN_DSN = os.environ.get("AIHUB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AIHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_counter = itertools.count()


def _unavailable(what: str, why: object) -> None:
    message = f"{what} is unreachable: {why}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{dbname}"


async def _pg_exec(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    engine = create_engine(Settings(database_url=url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"aihub_tmpl_{os.getpid()}"
    try:
        asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable("PostgreSQL", exc)
    asyncio.run(_migrate(_pg_url(name)))
    yield name
    asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def redis_available() -> str:
    client = SyncRedis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        _unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = f"aihub_t_{os.getpid()}_{next(_counter)}"
    asyncio.run(_pg_exec(f"CREATE DATABASE {name} TEMPLATE {pg_template}"))
    yield _pg_url(name)
    asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "aihub.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def redis_url(redis_available: str) -> str:
    client = SyncRedis.from_url(redis_available)
    client.flushdb()
    client.close()
    return redis_available


BACKENDS = ["pg-redis", "sqlite-memory"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, request: pytest.FixtureRequest) -> Settings:
    if backend == "pg-redis":
        db = request.getfixturevalue("pg_url")
        redis = request.getfixturevalue("redis_url")
    else:
        db, redis = request.getfixturevalue("sqlite_url"), None
    return Settings(env="test", database_url=db, redis_url=redis, auto_migrate=False, db_pool_size=40)


@pytest.fixture
def pg_settings(pg_url: str, redis_url: str) -> Settings:
    """PostgreSQL and Redis only: for the concurrency tests that production behaviour needs."""
    return Settings(env="test", database_url=pg_url, redis_url=redis_url, auto_migrate=False, db_pool_size=40)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.build(settings)
    yield rt
    await rt.close()


@pytest.fixture
async def pg_runtime(pg_settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime.build(pg_settings)
    yield rt
    await rt.close()


def _core_app(rt: Runtime) -> Any:
    app = create_app(runtime=rt)
    app.state.prepared = True
    app.state.owns_runtime = False
    return app


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_core_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as c:
        yield c


def _auth_app(rt: Runtime) -> Any:
    app = create_auth_app(runtime=rt)
    app.state.prepared = True
    app.state.owns_runtime = False
    return app


@pytest.fixture
async def auth_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The auth service over the same runtime (database, store, codec) as ``client``."""
    transport = httpx.ASGITransport(app=_auth_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as c:
        yield c


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port that refuses connections for the whole test: bound but never listening, so no
    server started later in the test (a gateway on ``free_port()``) can be handed the same one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    runtime: Runtime


async def _live(app: Any, rt: Runtime) -> AsyncIterator[LiveServer]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="httptools",
        loop="none",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield LiveServer(url=f"http://127.0.0.1:{port}", runtime=rt)
    server.should_exit = True
    await task


@pytest.fixture
async def live_core(pg_runtime: Runtime) -> AsyncIterator[LiveServer]:
    """The core app behind a real uvicorn server on loopback, in this test's event loop."""
    async for live in _live(_core_app(pg_runtime), pg_runtime):
        yield live


@pytest.fixture
async def live_auth(pg_runtime: Runtime) -> AsyncIterator[LiveServer]:
    """The auth app behind a real uvicorn server, on PostgreSQL and Redis."""
    async for live in _live(_auth_app(pg_runtime), pg_runtime):
        yield live


# ------------------------------------------------------------------ factories


@dataclass
class Caller:
    id: str
    email: str
    token: str
    roles: list[str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def create_user(
    rt: Runtime,
    *,
    email: str | None = None,
    roles: list[str] | None = None,
    password: str | None = None,
    status: str = "active",
) -> Caller:
    from aihub.core.users import service as users
    from aihub.models import User

    email = email or f"u-{uuid.uuid4().hex[:12]}@example.com"
    tx = rt.tx()
    try:
        view = await users.create(
            tx, rt.store, None, email=email, password=password, roles=roles or ["user"], verified=True
        )
        if status != "active":
            user = await tx.session.get(User, view.id)
            assert user is not None
            user.status = status
        await tx.commit()
    finally:
        await tx.close()
    roles = view.roles
    top = roles[0] if roles else "guest"
    token = rt.codec.issue(sub=str(view.id), role=top, roles=roles, email=email)
    return Caller(id=str(view.id), email=email, token=token, roles=roles)


@pytest.fixture
async def admin(runtime: Runtime) -> Caller:
    return await create_user(runtime, email="admin@example.com", roles=["admin"])


@pytest.fixture
async def manager(runtime: Runtime) -> Caller:
    return await create_user(runtime, email="manager@example.com", roles=["manager"])


@pytest.fixture
async def user(runtime: Runtime) -> Caller:
    return await create_user(runtime, email="user@example.com", roles=["user"])


# ------------------------------------------------------------------ a JWKS endpoint


class LocalServer:
    """Start/stop for a fake server on loopback (aiohttp); a subclass builds its app and has
    ``port`` and ``runner`` fields."""

    port: int
    runner: Any
    shutdown_timeout = 60.0  # aiohttp's default: in-flight handlers may finish at stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_app(self) -> Any:
        raise NotImplementedError

    async def start(self) -> None:
        from aiohttp import web

        self.runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=self.shutdown_timeout)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class FakeJwks(LocalServer):
    """A stand-in for auth's ``/.well-known/jwks.json`` on loopback that counts its requests.

    What it serves can change while it runs (``keys``, ``cache_control``, ``status``); ``delay``
    makes it answer late (an auth instance that hangs); ``stop()`` makes it refuse connections.
    """

    port: int
    keys: list[dict[str, Any]]
    cache_control: str | None = "public, max-age=300"
    status: int = 200
    delay: float = 0.0
    hits: int = 0
    runner: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def _serve(self, _: Any) -> Any:
        from aiohttp import web

        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        headers = {"Cache-Control": self.cache_control} if self.cache_control else None
        return web.json_response({"keys": self.keys}, status=self.status, headers=headers)

    shutdown_timeout = 0.1

    def build_app(self) -> Any:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._serve)
        return app


@pytest.fixture
async def fake_jwks() -> AsyncIterator[FakeJwks]:
    server = FakeJwks(free_port(), keys=[])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def smtp_sink() -> Iterator[Any]:
    """A real SMTP server on a free port that keeps every message (see tests/smtp_sink.py)."""
    from tests.smtp_sink import SmtpSink

    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
