"""A database error on a request carrying a password logs the failure, never the bound values.

Real ``aihub serve`` processes (their own logging, as in production) on both engines; a
trigger makes the write of the password hash fail, and the process's whole output is searched
for the password and for any argon2 hash.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.conftest import create_user, free_port
from tests.ops.procs import aihub_env, start, wait_ready

pytestmark = pytest.mark.e2e

PASSWORDS = ["Secret-Horse-Battery-1", "another secret pass 2"]

# Every write to users fails inside the database, after the hash was bound to the statement.
_BREAK = {
    "postgresql": [
        "CREATE FUNCTION aihub_test_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'users are read-only'; "
        "END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER aihub_test_fail_insert BEFORE INSERT OR UPDATE ON users "
        "FOR EACH ROW EXECUTE FUNCTION aihub_test_fail()",
    ],
    # SQLite: RAISE() would be a constraint error (answered 409); a trigger writing to a table
    # that no longer exists fails as an operational error instead.
    "sqlite": [
        "CREATE TABLE aihub_test_gone (x INTEGER)",
        "CREATE TRIGGER aihub_test_fail_insert BEFORE INSERT ON users "
        "BEGIN INSERT INTO aihub_test_gone VALUES (1); END",
        "CREATE TRIGGER aihub_test_fail_update BEFORE UPDATE ON users "
        "BEGIN INSERT INTO aihub_test_gone VALUES (1); END",
        "DROP TABLE aihub_test_gone",
    ],
}


async def _break_user_writes(rt: Runtime) -> None:
    async with rt.engine.begin() as conn:
        for statement in _BREAK[rt.engine.dialect.name]:
            await conn.exec_driver_sql(statement)


async def test_a_failing_statement_logs_no_parameter_values(settings: Settings, tmp_path: Path) -> None:
    rt = Runtime.build(settings)
    auth_port, core_port = free_port(), free_port()
    values = {"AIHUB_DATABASE_URL": settings.database_url, "AIHUB_AUTO_MIGRATE": "false"}
    if settings.redis_url:
        values["AIHUB_REDIS_URL"] = settings.redis_url
    env = aihub_env(
        **values, AIHUB_AUTH_PORT=str(auth_port), AIHUB_CORE_PORT=str(core_port), AIHUB_CORE_RUN_JOBS="false"
    )
    auth = start("auth", ["serve", "auth"], env, tmp_path, auth_port)
    core = start("core", ["serve", "core"], env, tmp_path, core_port)
    try:
        member = await create_user(rt, password=PASSWORDS[0])
        await wait_ready(auth)
        await wait_ready(core)
        await _break_user_writes(rt)
        async with httpx.AsyncClient(timeout=30) as client:
            for password in PASSWORDS:
                response = await client.post(
                    auth.url + "/register", json={"email": f"{len(password)}@example.com", "password": password}
                )
                assert response.status_code == 500, response.text
                assert response.json()["code"] == "INTERNAL_ERROR"
                assert password not in response.text
            response = await client.patch(
                core.url + "/api/users/me",
                headers=member.headers,
                json={"password": PASSWORDS[1], "currentPassword": PASSWORDS[0]},
            )
            assert response.status_code == 500, response.text
    finally:
        auth.terminate()
        core.terminate()
        await auth.exited()
        await core.exited()
        await rt.close()
    logs = auth.output() + core.output()
    # The failures were logged, with their SQL ...
    assert logs.count('"unhandled_error"') >= 3, logs[-3000:]
    assert "users" in logs and "parameters hidden" in logs.lower(), logs[-3000:]
    # ... but none of the values bound to it.
    for password in PASSWORDS:
        assert password not in logs
    assert "$argon2" not in logs
