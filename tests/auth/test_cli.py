"""The CLI and auth: `aihub serve` knows the auth service (alone, or next to core on one shared
runtime); `aihub admin set-password` recovers an account and ends its sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from aihub import cli
from aihub.config import Settings
from aihub.kit.runtime import Runtime
from aihub.models import AuditLog
from tests.auth.conftest import PASSWORD, Session, assert_error, login
from tests.conftest import _auth_app, _core_app, create_user

T = TypeVar("T")


async def test_auth_listener_shares_the_runtime(tmp_path: object) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/cli.db", auth_port=4501, core_port=4502)
    runtime = Runtime.build(settings)
    try:
        assert "auth" in cli.SERVICES
        listeners = [cli._listener(name, settings, runtime) for name in cli.SERVICES]
        by_name = {listener.name: listener for listener in listeners}
        assert by_name["auth"].port == 4501
        assert by_name["core"].port == 4502
        assert by_name["auth"].app.state.runtime is by_name["core"].app.state.runtime is runtime
        assert by_name["auth"].app.state.owns_runtime is False
        assert by_name["auth"].app.title == "aihub auth"
    finally:
        await runtime.close()


# ------------------------------------------------------------------ aihub admin set-password

NEW_PASSWORD = "a-recovered-password"


def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("AIHUB_ENV", "test")
    monkeypatch.setenv("AIHUB_DATABASE_URL", settings.database_url)
    if settings.redis_url:
        monkeypatch.setenv("AIHUB_REDIS_URL", settings.redis_url)
    else:
        monkeypatch.delenv("AIHUB_REDIS_URL", raising=False)


async def _with_clients(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    runtime = Runtime.build(settings)
    try:
        auth = httpx.AsyncClient(transport=httpx.ASGITransport(app=_auth_app(runtime)), base_url="http://auth.test")
        core = httpx.AsyncClient(transport=httpx.ASGITransport(app=_core_app(runtime)), base_url="http://core.test")
        async with auth, core:
            return await work(auth, core, runtime)
    finally:
        await runtime.close()


def test_admin_set_password_resets_and_ends_every_session(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    email = "lost.admin@example.com"

    async def before(auth: httpx.AsyncClient, core: httpx.AsyncClient, runtime: Runtime) -> list[Session]:
        await create_user(runtime, email=email, roles=["admin"], password=PASSWORD)
        first = await login(auth, email)
        rotated = (await auth.post("/refresh", json={"refreshToken": first.refresh})).json()
        second = await login(auth, email)
        spent = Session(first.user_id, email, first.access, rotated["refreshToken"], rotated)
        # Guessing had locked the account: the reset opens it again.
        for i in range(runtime.settings.login_max_failures + 1):
            await auth.post("/login", json={"email": email, "password": f"guess-{i}"})
        return [spent, second]

    sessions = asyncio.run(_with_clients(settings, before))
    _cli_env(monkeypatch, settings)
    runner = CliRunner()
    verb = ["admin", "set-password", "--email", "Lost.Admin@Example.com"]
    done = runner.invoke(cli.app, verb, input=NEW_PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    assert "password set" in done.output
    assert NEW_PASSWORD not in done.output

    async def after(auth: httpx.AsyncClient, core: httpx.AsyncClient, runtime: Runtime) -> None:
        for old in sessions:
            assert_error(await core.get("/api/users/me", headers=old.headers), 401, "TOKEN_REVOKED")
            assert_error(await auth.post("/refresh", json={"refreshToken": old.refresh}), 401, "TOKEN_REVOKED")
        assert_error(await auth.post("/login", json={"email": email, "password": PASSWORD}), 401, "INVALID_CREDENTIALS")
        fresh = await login(auth, email, NEW_PASSWORD)
        assert (await core.get("/api/users/me", headers=fresh.headers)).status_code == 200
        tx = runtime.tx()
        try:
            rows = (
                (await tx.session.execute(select(AuditLog).where(AuditLog.action == "user.password_reset")))
                .scalars()
                .all()
            )
        finally:
            await tx.close()
        assert len(rows) == 1
        assert rows[0].entity_id == sessions[0].user_id and rows[0].actor_type == "system"
        assert rows[0].after is not None and rows[0].after["refreshTokens"] == 3  # one spent, two live
        assert rows[0].after["accessFamilies"] == 2
        assert NEW_PASSWORD not in repr((rows[0].before, rows[0].after))
        verify = await core.get("/api/audit-logs/verify", headers=fresh.headers)
        assert verify.json()["valid"] is True

    asyncio.run(_with_clients(settings, after))


def test_admin_set_password_refuses_bad_input(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async def before(auth: httpx.AsyncClient, core: httpx.AsyncClient, runtime: Runtime) -> None:
        await create_user(runtime, email="kept@example.com", password=PASSWORD)

    asyncio.run(_with_clients(settings, before))
    _cli_env(monkeypatch, settings)
    runner = CliRunner()
    short = runner.invoke(cli.app, ["admin", "set-password", "--email", "kept@example.com"], input="short\n")
    assert short.exit_code == 2 and "at least 8" not in short.output and "8 to 256" in short.output
    long = runner.invoke(cli.app, ["admin", "set-password", "--email", "kept@example.com"], input="x" * 300 + "\n")
    assert long.exit_code == 2
    nobody = ["admin", "set-password", "--email", "nobody@example.com"]
    unknown = runner.invoke(cli.app, nobody, input=NEW_PASSWORD + "\n")
    assert unknown.exit_code == 1 and "No account has this email" in unknown.output
    missing = runner.invoke(cli.app, ["admin", "set-password"], input=NEW_PASSWORD + "\n")
    assert missing.exit_code == 2

    async def unchanged(auth: httpx.AsyncClient, core: httpx.AsyncClient, runtime: Runtime) -> None:
        await login(auth, "kept@example.com")  # the old password still works

    asyncio.run(_with_clients(settings, unchanged))
