"""The Dockerfile, checked by reading and by running the pieces that do not need Docker.

No Docker engine here: the stages are parsed and held to the rules (two stages, the final one
without build tools and running as a non-root user, `aihub` as the entry point), the build
context is checked against .dockerignore, and the health-check one-liners (the image's and the
compose file's) run against a real gateway.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from aiohttp import web
from typer.testing import CliRunner

from aihub.cli import app as cli_app
from aihub.config import Settings
from aihub.gateway.app import GATEWAY, create_app
from aihub.kit.store import MemoryStore
from tests.conftest import free_port
from tests.deploy.files import ROOT, clean_env, healthcheck_url, services


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else str(len(stages))
            current = stages.setdefault(name, [])
        current.append((keyword, args))
    return stages


def _last(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in stage if kw == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def test_two_stages_and_a_final_image_without_build_tools() -> None:
    stages = _stages()
    assert list(stages) == ["builder", "runtime"]
    base = dict(kw_args for kw_args in _instructions() if kw_args[0] == "ARG")["ARG"]
    assert base.startswith("PYTHON_IMAGE=python:3.11-slim")
    assert all(_last(stage, "FROM").startswith("${PYTHON_IMAGE}") for stage in stages.values())  # same Python
    builder, runtime = stages["builder"], stages["runtime"]
    assert any("build-essential" in args for kw, args in builder if kw == "RUN")
    runtime_text = " ".join(args for _, args in runtime)
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in runtime_text, tool
    # The final stage takes only the built virtual environment from the builder: no source.
    copies = [args for kw, args in runtime if kw == "COPY"]
    assert copies == ["--from=builder /opt/aihub /opt/aihub"]


def test_runs_as_a_non_root_user_with_aihub_as_the_entry_point() -> None:
    runtime = _stages()["runtime"]
    user = _last(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, user
    assert json.loads(_last(runtime, "ENTRYPOINT")) == ["aihub"]
    command = json.loads(_last(runtime, "CMD"))
    assert command == ["serve", "core"]
    shown = CliRunner().invoke(cli_app, [*command, "--help"], prog_name="aihub")
    assert shown.exit_code == 0 and "Usage: aihub serve" in shown.output
    env = _last(runtime, "ENV")
    assert "AIHUB_HOST=0.0.0.0" in env and "PATH=/opt/aihub/bin:$PATH" in env


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used there: last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        candidates = [body, body.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, c) for c in candidates for p in [*prefixes, parts[-1]]):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for keyword, args in _stages()["builder"]:
        if keyword == "COPY":
            *src, _dest = args.split()
            sources += src
    assert sources == ["pyproject.toml", "README.md", "src"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), source
    assert not _ignored("src/aihub/cli.py", patterns)
    for kept_out in (".venv/bin/python", "tests/conftest.py", "aihub.db", ".git/HEAD", "src/aihub/__pycache__/x.pyc"):
        assert _ignored(kept_out, patterns), kept_out


def test_the_requirements_step_lists_the_projects_dependencies(tmp_path: Path) -> None:
    run = next(args for kw, args in _stages()["builder"] if kw == "RUN" and "tomllib" in args)
    words = shlex.split(run.split("&&")[0])
    assert words[:2] == ["python", "-c"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", words[2]], cwd=tmp_path, check=True)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == deps


def test_the_installed_package_carries_every_migration() -> None:
    """The image installs the package (not editable): files outside package-data would be lost."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["aihub"]
    package = ROOT / "src" / "aihub"
    for path in (package / "migrations").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(package).as_posix()
            assert any(fnmatch.fnmatchcase(relative, g) for g in globs), relative


# ------------------------------------------------------------------ health checks, for real


async def _run(command: list[str], env: dict[str, str]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), timeout=30)


async def _gateway(port: int) -> tuple[web.AppRunner, web.Application]:
    settings = Settings(env="test", core_url="http://127.0.0.1:9", auth_url="http://127.0.0.1:9")
    app = create_app(settings, store=MemoryStore())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, app


def _image_check() -> list[str]:
    check = _last(_stages()["runtime"], "HEALTHCHECK")
    flags, _, command = check.partition("CMD ")
    assert "--interval=" in flags and "--timeout=" in flags
    words: list[str] = json.loads(command)
    assert words[:2] == ["python", "-c"]
    return [sys.executable, *words[1:]]


async def test_the_image_health_check_finds_whichever_service_runs() -> None:
    port, unused = free_port(), free_port()
    runner, _ = await _gateway(port)
    try:
        # This container runs the gateway; auth's and core's ports answer nothing.
        ports = {"AIHUB_AUTH_PORT": str(unused), "AIHUB_CORE_PORT": str(unused)}
        assert await _run(_image_check(), clean_env(AIHUB_GATEWAY_PORT=str(port), **ports)) == 0
        as_core = {"AIHUB_GATEWAY_PORT": str(unused), "AIHUB_AUTH_PORT": str(unused)}
        assert await _run(_image_check(), clean_env(AIHUB_CORE_PORT=str(port), **as_core)) == 0
    finally:
        await runner.cleanup()
    nothing = {f"AIHUB_{name}_PORT": str(unused) for name in ("GATEWAY", "AUTH", "CORE")}
    assert await _run(_image_check(), clean_env(**nothing)) == 1


async def test_the_compose_health_checks_follow_readiness() -> None:
    command: Any = services()["gateway"]["healthcheck"]["test"]
    port = free_port()
    runner, app = await _gateway(port)
    url = healthcheck_url(services()["gateway"]).replace(":3000/", f":{port}/")
    check = [sys.executable, *command[2:-1], url]
    try:
        assert await _run(check, clean_env()) == 0
        app[GATEWAY].drain.draining = True  # shutting down: readiness 503
        assert await _run(check, clean_env()) != 0
    finally:
        await runner.cleanup()
    assert await _run(check, clean_env()) != 0  # nothing listening
