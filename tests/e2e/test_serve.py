"""The README's run command starts the embedded system, which answers on its ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become healthy in time")


@pytest.mark.e2e
def test_readme_run_command_serves_the_embedded_system(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")},
        "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'aihub.db'}",
        "AIHUB_CORE_PORT": str(port),
        "AIHUB_SHUTDOWN_DRAIN_SECONDS": "0.2",  # the drain itself is tested in tests/ops
        "AIHUB_AUTH_PORT": str(free_port()),
        "AIHUB_GATEWAY_PORT": str(free_port()),
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "dev.py"), "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, time.monotonic() + 60)
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready")
        assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": "memory"}}
        assert httpx.get(f"http://127.0.0.1:{port}/api/users/me").json()["code"] == "UNAUTHORIZED"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"First start: an administrator was created." in err
    assert b"password:" in err
    # Logs are JSON lines, and every request line carries its request ID.
    lines = [line for line in out.decode().splitlines() if line.strip()]
    import json

    records = [json.loads(line) for line in lines]
    requests = [r for r in records if r.get("event") == "request"]
    assert requests and all(r.get("request_id") for r in requests)


@pytest.mark.e2e
def test_admin_create_is_idempotent_and_reads_stdin(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")},
        "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'aihub.db'}",
    }
    aihub = [sys.executable, "-m", "aihub"]
    first = subprocess.run(
        [*aihub, "admin", "create", "--email", "Boss@Example.com"],
        input=b"long-password-1\n",
        env=env,
        capture_output=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr.decode()
    assert b"created administrator" in first.stderr
    again = subprocess.run(
        [*aihub, "admin", "create", "--email", "boss@example.com", "--password", "long-password-1"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert again.returncode == 0 and b"already an administrator" in again.stderr
    short = subprocess.run(
        [*aihub, "admin", "create", "--email", "x@example.com", "--password", "short"],
        env=env,
        capture_output=True,
        check=False,
    )
    assert short.returncode == 2
    bad_env = subprocess.run(
        [*aihub, "migrate"], env={**env, "AIHUB_ENV": "production"}, capture_output=True, check=False
    )
    assert bad_env.returncode == 2 and b"AIHUB_JWT_SECRET" in bad_env.stderr


@pytest.mark.e2e
def test_bad_route_file_is_a_one_line_configuration_error(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes: [ {prefix: /api/x, auth: sometimes} ]\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")},
        "AIHUB_GATEWAY_ROUTES": str(routes),
        "AIHUB_GATEWAY_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "aihub", "serve", "gateway"], env=env, capture_output=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert b"AIHUB_GATEWAY_ROUTES" in done.stderr
    assert b"Traceback" not in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "aihub", "serve", "gateway"],
        env={**env, "AIHUB_GATEWAY_ROUTES": str(tmp_path / "nope.toml")},
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert missing.returncode == 2 and b"Traceback" not in missing.stderr
