"""`aihub serve gateway` runs the gateway alone, as a process, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


@pytest.mark.e2e
def test_serve_gateway_alone(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")},
        "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'never-created.db'}",
        "AIHUB_GATEWAY_PORT": str(port),
        "AIHUB_SHUTDOWN_DRAIN_SECONDS": "0.2",  # the drain itself is tested in tests/ops
        "AIHUB_CORE_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "aihub", "serve", "gateway"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the gateway exited early"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        resp = httpx.get(f"http://127.0.0.1:{port}/api/users/me")
        assert resp.status_code == 401 and resp.json()["code"] == "UNAUTHORIZED"
        # The served gateway's own runner answers what aiohttp cannot parse (see server.py).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /api/pricing HTTP/1.1\nHost: x\nAuthorization: Bearer leak-me\n\n")
            raw = sock.recv(65_536)
        assert raw.split(b" ")[1] == b"400" and b"leak-me" not in raw and b"aiohttp" not in raw
        assert json.loads(raw.partition(b"\r\n\r\n")[2])["code"] == "BAD_REQUEST"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert any(line.get("status") == 401 and line.get("path") == "/api/users/me" for line in lines)  # access log
    assert not (tmp_path / "never-created.db").exists()  # the gateway alone needs no database
