"""deploy/compose.yaml, its environment files and the gateway route file, checked by reading.

There is no Docker engine here: the compose file is validated by a real compose implementation
(``docker-compose config``, which needs no engine), and by structure: the services, their order
of start, health checks, what is published, that every command is a real ``aihub`` command and
every variable a real setting. ``test_stack.py`` then runs the same commands as processes.
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import pytest
from typer.testing import CliRunner

from aihub import cli
from aihub.config import Settings
from aihub.gateway.routing import default_table, load_table
from tests.conftest import IN_CI
from tests.deploy.files import (
    AIHUB_SERVICES,
    DEPLOY,
    ENV_FILES,
    FOREIGN_VARIABLES,
    STACK,
    compose,
    compose_tool,
    healthcheck_url,
    known_settings,
    read_env_file,
    services,
)

SERVICE_PORTS = {"auth": 3001, "core-1": 3002, "core-2": 3002, "gateway": 3000, "worker": 3004}


def _compose_config(env_file: str) -> subprocess.CompletedProcess[str]:
    tool = compose_tool()
    if tool is None:
        message = "no docker compose implementation (apt-get install docker-compose; .ci/run does)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return subprocess.run(
        [*tool, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DEPLOY_ENV_FILE": env_file},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("env_file", ["env/dev.env", "env/production.env.example"])
def test_docker_compose_accepts_the_file(env_file: str) -> None:
    done = _compose_config(env_file)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_stack_has_every_service_and_only_the_gateway_is_published() -> None:
    found = services()
    default = {name for name, svc in found.items() if not svc.get("profiles")}
    assert default == STACK
    assert [name for name in default if found[name].get("ports")] == ["gateway"]
    assert found["gateway"]["ports"] == ["${GATEWAY_PUBLISH:-8080}:3000"]
    for name, svc in found.items():
        if svc.get("profiles"):  # optional monitoring: reachable from this host only
            assert all(str(port).startswith("127.0.0.1:") for port in svc.get("ports", [])), name
    assert found["postgres"]["image"].startswith("postgres:1")
    assert int(found["postgres"]["image"].split(":")[1].split("-")[0]) >= 15
    assert found["redis"]["image"].startswith("redis:")


def test_every_aihub_service_runs_the_image_with_the_shared_environment() -> None:
    for name in AIHUB_SERVICES:
        svc = services()[name]
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
        assert svc["env_file"] == "${DEPLOY_ENV_FILE:-env/dev.env}", name
        assert svc["image"] == "${AIHUB_IMAGE:-aihub:latest}", name
        assert svc["stop_grace_period"] == "40s", name  # more than drain + shutdown timeout


def test_order_of_start_and_health_checks() -> None:
    found = services()
    for name in ("postgres", "redis", "auth", "core-1", "core-2", "worker", "gateway"):
        check = found[name]["healthcheck"]
        assert check["test"][0] == "CMD" and not check.get("disable"), name
    assert found["migrate"]["healthcheck"] == {"disable": True}
    assert found["migrate"]["restart"] == "no"
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("auth", "core-1", "core-2", "worker"):
        assert found[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
    assert found["gateway"]["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("redis", "auth", "core-1", "core-2")
    }
    # Each aihub service probes its own readiness endpoint on its own port.
    for name, port in SERVICE_PORTS.items():
        assert healthcheck_url(found[name]) == f"http://127.0.0.1:{port}/health/ready", name


def _help(command: list[str]) -> str:
    """``aihub <command> --help`` through the real CLI: exit 0 only for an existing command path."""
    shown = CliRunner().invoke(cli.app, [*command, "--help"], prog_name="aihub")
    assert shown.exit_code == 0, f"aihub {' '.join(command)}: {shown.output}"
    return shown.output


def test_every_command_is_a_real_aihub_command() -> None:
    commands = {name: svc["command"] for name, svc in services().items() if name in AIHUB_SERVICES}
    assert commands == {
        "migrate": ["migrate"],
        "auth": ["serve", "auth"],
        "core-1": ["serve", "core"],
        "core-2": ["serve", "core"],
        "worker": ["worker"],
        "gateway": ["serve", "gateway"],
    }
    for name, command in commands.items():
        usage = _help(command)
        assert f"Usage: aihub {command[0]} " in usage, name
        if command[0] == "serve":
            assert command[1:] and command[1] in cli.SERVICES, name
    # The one-off commands that docs/operations.md runs through the migrate service.
    _help(["admin", "create"])
    _help(["ledger", "reconcile"])


def test_a_wrong_command_would_be_caught() -> None:
    with pytest.raises(AssertionError, match="aihub ledger nope"):
        _help(["ledger", "nope"])
    with pytest.raises(AssertionError, match="aihub nope"):
        _help(["nope"])


def _documented(path: Any) -> list[str]:
    """Assignments with no comment above them or above the block of assignments they belong to."""
    bare: list[str] = []
    previous = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not (previous.startswith("#") or "=" in previous):
            bare.append(stripped)
        previous = stripped
    return bare


@pytest.mark.parametrize("kind", list(ENV_FILES))
def test_env_files_name_only_real_settings_and_document_every_line(kind: str) -> None:
    values = read_env_file(ENV_FILES[kind])
    unknown = {name for name in values if name not in known_settings() and name not in FOREIGN_VARIABLES}
    assert unknown == set(), f"not aihub settings: {sorted(unknown)}"
    assert _documented(ENV_FILES[kind]) == []
    # What compose passes per service on top of the file is held to the same rule.
    for name in AIHUB_SERVICES:
        extra = set(services()[name].get("environment", {}))
        assert extra <= known_settings(), (name, extra - known_settings())


def _settings_from(values: dict[str, str]) -> Settings:
    """Settings from an environment file's values; <placeholders> filled with their example."""
    fields = {f"AIHUB_{name.upper()}": name for name in Settings.model_fields}
    filled = {k: v.replace("<", "").replace(">", "") for k, v in values.items() if k in fields}
    return Settings.model_validate({fields[k]: v for k, v in filled.items()})


def test_dev_env_is_valid_and_points_at_the_bundled_services() -> None:
    settings = _settings_from(read_env_file(ENV_FILES["dev"]))
    assert settings.env == "development"
    assert settings.database_url == "postgresql+asyncpg://aihub:aihub-dev-password@postgres:5432/aihub"
    assert services()["postgres"]["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-aihub-dev-password}"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.auto_migrate is False
    assert settings.host == "0.0.0.0"  # noqa: S104 - a container listens on its own interfaces
    assert len(settings.jwt_secret) >= 32


def test_production_example_keeps_secrets_as_placeholders_and_is_valid_once_filled() -> None:
    values = read_env_file(ENV_FILES["production"])
    assert values["AIHUB_ENV"] == "production"
    assert values["AIHUB_JWT_SECRET"].startswith("<") and values["AIHUB_JWT_SECRET"].endswith(">")
    assert ":<database-password>@" in values["AIHUB_DATABASE_URL"]
    assert values["AIHUB_AUTO_MIGRATE"] == "false"
    settings = _settings_from(values)
    assert settings.env == "production"  # the production checks (secret length) passed
    # Every connection of every process fits PostgreSQL's default max_connections (100).
    per_process = settings.db_pool_size + settings.db_pool_overflow
    assert per_process * len({"auth", "core-1", "core-2", "worker"}) < 100


def test_addresses_that_settings_trust_are_the_compose_network_addresses() -> None:
    subnet = ipaddress.ip_network(compose()["networks"]["aihub"]["ipam"]["config"][0]["subnet"])
    gateway_ip = ipaddress.ip_address(services()["gateway"]["networks"]["aihub"]["ipv4_address"])
    prometheus_ip = ipaddress.ip_address(services()["prometheus"]["networks"]["aihub"]["ipv4_address"])
    assert gateway_ip in subnet and prometheus_ip in subnet
    for kind, path in ENV_FILES.items():
        values = read_env_file(path)
        assert values["FORWARDED_ALLOW_IPS"] == str(gateway_ip), kind
        allowed = _settings_from(values).metrics_networks
        assert any(prometheus_ip in net for net in allowed), kind
        assert not any(gateway_ip in net for net in allowed), kind  # clients reach /metrics only via it


def test_route_file_loads_with_the_gateways_loader_and_lists_both_cores() -> None:
    gateway = services()["gateway"]
    mount = "./gateway-routes.yaml:/etc/aihub/gateway-routes.yaml:ro"
    assert gateway["volumes"] == [mount]
    assert gateway["environment"]["AIHUB_GATEWAY_ROUTES"] == "/etc/aihub/gateway-routes.yaml"
    table = load_table(Settings(gateway_routes=str(DEPLOY / "gateway-routes.yaml")))
    assert table.upstreams["core"] == ["http://core-1:3002", "http://core-2:3002"]
    assert table.upstreams["auth"] == ["http://auth:3001"]
    for group in ("auth", "core"):
        for url in table.upstreams[group]:
            host, port = url.removeprefix("http://").split(":")
            assert host in services() and SERVICE_PORTS[host] == int(port), url
    # The file is the default table written out: a route added in code must be added here.
    assert set(table.routes) == set(default_table(Settings()).routes)
    assert [r.prefix for r in table.routes] == [r.prefix for r in default_table(Settings()).routes]


def test_prometheus_scrapes_every_aihub_process() -> None:
    import yaml

    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: sorted(t for sc in job["static_configs"] for t in sc["targets"])
        for job in config["scrape_configs"]
    }
    assert targets == {
        "aihub-gateway": ["gateway:3000"],
        "aihub-auth": ["auth:3001"],
        "aihub-core": ["core-1:3002", "core-2:3002"],
        "aihub-worker": ["worker:3004"],
    }
    for addresses in targets.values():
        for address in addresses:
            host, port = address.split(":")
            assert SERVICE_PORTS[host] == int(port), address
    assert services()["worker"]["environment"]["AIHUB_WORKER_PORT"] == "3004"
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("kind", list(ENV_FILES))
def test_graceful_shutdown_fits_in_the_stop_grace_period(kind: str) -> None:
    """Docker kills a container stop_grace_period after SIGTERM: drain + shutdown must end first."""
    values = read_env_file(ENV_FILES[kind])
    drain = float(values["AIHUB_SHUTDOWN_DRAIN_SECONDS"])
    timeout = float(values["AIHUB_SHUTDOWN_TIMEOUT_SECONDS"])
    grace = {int(svc["stop_grace_period"].removesuffix("s")) for n, svc in services().items() if n in AIHUB_SERVICES}
    assert drain + timeout < min(grace)
    # Not-ready for at least one gateway health interval, so the gateway notices before it stops.
    assert drain >= _settings_from(values).gateway_health_interval_seconds
