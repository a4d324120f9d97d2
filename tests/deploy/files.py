"""Readers of the deployment files (deploy/, Dockerfile) shared by the deploy tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from aihub.cli import app as cli_app
from aihub.config import Settings
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENV_FILES = {"dev": DEPLOY / "env" / "dev.env", "production": DEPLOY / "env" / "production.env.example"}
# Services that `docker compose up` starts (the monitoring ones need --profile monitoring).
STACK = {"postgres", "redis", "migrate", "auth", "core-1", "core-2", "worker", "gateway"}
AIHUB_SERVICES = {"migrate", "auth", "core-1", "core-2", "worker", "gateway"}
# Variables in the environment files that are read by something other than aihub's settings.
FOREIGN_VARIABLES = {"FORWARDED_ALLOW_IPS"}  # uvicorn: whose X-Forwarded-For auth and core believe


def cli_commands() -> set[str]:
    """Top-level commands and groups of the ``aihub`` typer app."""
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in cli_app.registered_commands}
    names |= {g.name or "" for g in cli_app.registered_groups}
    return {name.replace("_", "-") for name in names if name}


def known_settings() -> set[str]:
    return {f"AIHUB_{name.upper()}" for name in Settings.model_fields}


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    result = compose()["services"]
    assert isinstance(result, dict)
    return result


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines as docker compose reads them (no quotes, no interpolation)."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}:{number}: not NAME=value: {line!r}"
        assert name not in values, f"{path.name}:{number}: {name} set twice"
        values[name] = value
    return values


def healthcheck_url(service: dict[str, Any]) -> str:
    """The URL an aihub service's health check probes (the last argument of its command)."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return str(test[-1])


def compose_tool() -> list[str] | None:
    """A docker compose implementation that validates a file without a Docker engine."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if done.returncode == 0:
            return ["docker", "compose"]
    return None


def require_tool(name: str, how: str) -> str:
    """A system tool the test needs: under CI its absence fails (``.ci/run`` installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({how})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any AIHUB_* variable, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIHUB_")}
    env.update(extra)
    return env
