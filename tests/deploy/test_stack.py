"""The compose stack without Docker: the same commands, environment and health checks as processes.

Every aihub service of deploy/compose.yaml runs here as ``python -m aihub <its command>`` with
the environment compose gives it (deploy/env/dev.env plus the service's own ``environment``),
on real PostgreSQL and Redis. Only what a container network provides is replaced: host names
become 127.0.0.1 and each service gets a free port instead of its fixed one. Then the
compose health checks must pass, and traffic through the gateway must reach both core instances.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from tests.conftest import _pg_exec, _pg_url, free_port
from tests.deploy.files import (
    DEPLOY,
    ENV_FILES,
    clean_env,
    healthcheck_url,
    known_settings,
    read_env_file,
    services,
)

pytestmark = pytest.mark.e2e
_names = itertools.count()
# The fixed port of each service inside its container, as in compose.yaml's health checks.
CONTAINER_PORTS = {"gateway": 3000, "auth": 3001, "core-1": 3002, "core-2": 3002, "worker": 3004}
PORT_SETTING = {"gateway": "AIHUB_GATEWAY_PORT", "auth": "AIHUB_AUTH_PORT", "core": "AIHUB_CORE_PORT"}


@pytest.fixture
def empty_pg_url(pg_template: str) -> Iterator[str]:
    """A database with no schema at all: the ``migrate`` step has to create it."""
    del pg_template  # requested for its check that PostgreSQL is reachable (fails under CI)
    name = f"aihub_t_{os.getpid()}_stack_{next(_names)}"
    asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"))
    yield _pg_url(name)
    asyncio.run(_pg_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]


def _environment(service: str, base: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    env = dict(base)
    for name, value in services()[service].get("environment", {}).items():
        env[name] = str(value)
    command = services()[service]["command"]
    if command[0] == "serve":
        env[PORT_SETTING[command[1]]] = str(ports[service])
    elif command[0] == "worker":
        env["AIHUB_WORKER_PORT"] = str(ports[service])
    return env


def _routes(tmp_path: Path, ports: dict[str, int]) -> Path:
    """deploy/gateway-routes.yaml with the compose host names replaced by loopback ports."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "gateway-routes.yaml").read_text())
    for group, urls in data["upstreams"].items():
        rewritten = []
        for url in urls:
            host = url.removeprefix("http://").split(":")[0]
            rewritten.append(f"http://127.0.0.1:{ports[host]}")
        data["upstreams"][group] = rewritten
    path = tmp_path / "gateway-routes.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(name: str, env: dict[str, str], port: int, tmp_path: Path) -> Service:
    log_path = tmp_path / f"{name}.log"
    log = log_path.open("wb")
    command = [sys.executable, "-m", "aihub", *services()[name]["command"]]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    return Service(name, port, proc, log, log_path)


def _health_check(service: Service) -> list[str]:
    """The compose health check of this service, aimed at its loopback port."""
    test = services()[service.name]["healthcheck"]["test"]
    url = healthcheck_url(services()[service.name])
    url = url.replace(f":{CONTAINER_PORTS[service.name]}/", f":{service.port}/")
    return [sys.executable, *test[2:-1], url]


def _wait_healthy(service: Service, deadline: float) -> None:
    check = _health_check(service)
    while True:
        assert service.proc.poll() is None, f"{service.name} exited: {service.tail()}"
        if subprocess.run(check, capture_output=True, check=False).returncode == 0:
            return
        assert time.monotonic() < deadline, f"{service.name} never became healthy: {service.tail()}"
        time.sleep(0.2)


def _requests_seen(service: Service, route: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("aihub_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_compose_commands_run_the_stack(empty_pg_url: str, redis_url: str, tmp_path: Path) -> None:
    base = read_env_file(ENV_FILES["dev"])
    assert set(base) - {"FORWARDED_ALLOW_IPS"} <= known_settings()
    base.update(
        AIHUB_DATABASE_URL=empty_pg_url,
        AIHUB_REDIS_URL=redis_url,
        AIHUB_HOST="127.0.0.1",
        AIHUB_MCP_URL=f"http://127.0.0.1:{free_port()}",  # no MCP server, as in compose
        FORWARDED_ALLOW_IPS="127.0.0.1",
        AIHUB_LOG_LEVEL="info",
    )
    base = clean_env(**base)

    # 1. The one-shot migrate service: creates the schema, and is harmless when run again.
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "aihub", *services()["migrate"]["command"]],
            env=base,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    # 2. The long-running services, in compose's order of start.
    names = ["auth", "core-1", "core-2", "worker", "gateway"]
    ports = {name: free_port() for name in names}
    started: dict[str, Service] = {}
    try:
        for name in names[:-1]:
            started[name] = _start(name, _environment(name, base, ports), ports[name], tmp_path)
        deadline = time.monotonic() + 90
        for service in started.values():
            _wait_healthy(service, deadline)
        gateway_env = _environment("gateway", base, ports)
        gateway_env["AIHUB_GATEWAY_ROUTES"] = str(_routes(tmp_path, ports))
        started["gateway"] = _start("gateway", gateway_env, ports["gateway"], tmp_path)
        _wait_healthy(started["gateway"], time.monotonic() + 60)

        # 3. Traffic through the gateway reaches auth and both core instances.
        gw = f"http://127.0.0.1:{ports['gateway']}"
        with httpx.Client(base_url=gw, timeout=10) as client:
            account = {"email": "ops@example.com", "password": "long-enough-1"}
            assert client.post("/api/auth/register", json=account).status_code == 201
            login = client.post("/api/auth/login", json=account)
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
            for _ in range(20):
                me = client.get("/api/users/me", headers=headers)
                assert me.status_code == 200, me.text
            assert me.json()["email"] == "ops@example.com"
        per_core = [_requests_seen(started[name], "/api/users/me") for name in ("core-1", "core-2")]
        assert sum(per_core) == 20 and min(per_core) > 0, per_core
    finally:
        for service in started.values():
            service.proc.send_signal(signal.SIGTERM)
        codes = {}
        for service in started.values():
            try:
                codes[service.name] = service.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                service.proc.kill()
                codes[service.name] = service.proc.wait()
            service.log.close()
    # 4. docker stop: every service exits 0 on SIGTERM.
    assert codes == dict.fromkeys(started, 0), {n: started[n].tail() for n, c in codes.items() if c}
