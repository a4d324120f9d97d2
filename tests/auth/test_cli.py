"""`aihub serve` knows the auth service: alone, or next to core on one shared runtime."""

from __future__ import annotations

from aihub import cli
from aihub.config import Settings
from aihub.kit.runtime import Runtime


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
