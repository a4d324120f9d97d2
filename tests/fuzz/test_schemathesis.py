"""Schemathesis against core's and auth's OpenAPI schemas: no 5xx, nothing the schema does not say.

For each service, on both engines, with an admin token and with a user token, every operation
gets schema-valid (positive) and schema-invalid (negative) requests over real HTTP (uvicorn on
loopback). Each answer is checked: not a 5xx, its status documented for the operation, its
body and content type as documented. Failures of all operations are collected and reported
together. Bounded (``AIHUB_FUZZ_EXAMPLES`` examples per operation and mode, default 6; the
seed is fixed so CI is reproducible, ``AIHUB_FUZZ_RANDOM=1`` explores new inputs).

Run as its own stage (`.ci/run`): ``pytest -m fuzz tests/fuzz``; the main suite deselects it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aihub.config import Settings
from aihub.kit.runtime import Runtime
from tests.auth.identity.fake_oidc import CLIENT_ID, CLIENT_SECRET, FakeOidc
from tests.conftest import _auth_app, _core_app, create_user, free_port

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("AIHUB_FUZZ_EXAMPLES", "6"))
RANDOM = os.environ.get("AIHUB_FUZZ_RANDOM", "") == "1"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Operations that end the caller's own session run last, so the rest are fuzzed with a live token.
LAST = ("POST /logout",)


@dataclass
class Served:
    urls: dict[str, str]
    tokens: dict[str, str]
    schemas: dict[str, dict[str, Any]]
    _stop: list[Any] = field(default_factory=list)


def _serve(settings: Settings) -> Iterator[Served]:
    """Core and auth on uvicorn in a thread with its own event loop (the test itself is sync:
    hypothesis drives it), sharing one runtime; an admin and a user with tokens. Google sign-in
    is configured against the fake OpenID provider, so its operations answer as in production
    (an unconfigured app would answer every input with 503 OAUTH_NOT_CONFIGURED)."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        google = FakeOidc(free_port(), key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        await google.start()
        runtime = Runtime.build(
            settings.model_copy(
                update={
                    "google_client_id": CLIENT_ID,
                    "google_client_secret": CLIENT_SECRET,
                    "oidc_google_issuer": google.issuer,
                }
            )
        )
        try:
            admin = await create_user(runtime, roles=["admin"])
            user = await create_user(runtime, roles=["user"])
            apps = {"core": _core_app(runtime), "auth": _auth_app(runtime)}
            servers = {}
            for name, app in apps.items():
                port = free_port()
                config = uvicorn.Config(
                    app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off"
                )
                servers[name] = (uvicorn.Server(config), port)
            tasks = [asyncio.create_task(server.serve()) for server, _ in servers.values()]
            while not all(server.started for server, _ in servers.values()):
                await asyncio.sleep(0.01)
            state["served"] = Served(
                urls={name: f"http://127.0.0.1:{port}" for name, (_, port) in servers.items()},
                tokens={"admin": admin.token, "user": user.token},
                schemas={name: app.openapi() for name, app in apps.items()},
            )
            state["servers"] = [server for server, _ in servers.values()]
            ready.set()
            await asyncio.gather(*tasks)
        finally:
            await runtime.close()
            await google.stop()
            ready.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    ready.wait(60)
    served: Served = state["served"]
    yield served
    for server in state["servers"]:
        server.should_exit = True
    thread.join(30)


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    yield from _serve(settings)


def _operations(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return sorted(ops, key=lambda op: (op.label in LAST, op.label))


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing input is shown
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()


@pytest.mark.parametrize("service", ["core", "auth"])
@pytest.mark.parametrize("role", ["admin", "user"])
def test_schema_holds_under_fuzzing(served: Served, service: str, role: str) -> None:
    schema = schemathesis.openapi.from_dict(served.schemas[service])
    failures: list[str] = []
    for operation in _operations(schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, served.urls[service], served.tokens[role])
            except Unsatisfiable:
                pass  # negative mode of an operation without parameters or body: nothing to break
            except (Exception, BaseExceptionGroup) as exc:  # a check failed, or a request could not be sent
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    # The service is still healthy after all that.
    assert httpx.get(served.urls[service] + "/health", timeout=10).status_code == 200
    assert not failures, f"{len(failures)} failing operation/mode pairs:\n\n" + "\n\n".join(failures)
