"""A running aihub for the console's browser tests and the screenshot script.

The README's first command (`python3 scripts/dev.py run`, the embedded default: SQLite and
in-process stores, every service in one process) is started on free ports in a temporary
folder; the admin it creates prints its password once on standard error, which is read from
there, as a newcomer would. Debian's chromium is driven by Playwright through
``executable_path`` (Playwright's own browser downloads are never used).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AIHUB_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_LINE = re.compile(r"aihub is running: open (http://\S+/console/)")
PASSWORD_LINE = re.compile(r"password:\s+(\S+)")
# Models with seeded prices (migration 0004): the usage the dashboards show.
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))


def chromium_path() -> str | None:
    found = shutil.which(CHROMIUM) if not os.path.isabs(CHROMIUM) else (CHROMIUM if os.path.exists(CHROMIUM) else None)
    return found


@dataclass
class System:
    folder: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    console_url: str = ""
    base_url: str = ""
    admin_email: str = "admin@aihub.local"
    admin_password: str = ""
    stderr_lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 90.0) -> None:
        gateway = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")},
            "AIHUB_DATABASE_URL": f"sqlite+aiosqlite:///{self.folder / 'aihub.db'}",
            "AIHUB_GATEWAY_PORT": str(gateway),
            "AIHUB_AUTH_PORT": str(free_port()),
            "AIHUB_CORE_PORT": str(free_port()),
            "AIHUB_SHUTDOWN_DRAIN_SECONDS": "0",
            "AIHUB_GATEWAY_ACCESS_LOG": "false",
            **self.env_extra,
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "dev.py"), "run"],
            cwd=self.folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise AssertionError("aihub did not print its console line:\n" + "".join(self.stderr_lines[-40:]))
        self.base_url = f"http://127.0.0.1:{gateway}"

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if (found := PASSWORD_LINE.search(line)) and not self.admin_password:
                self.admin_password = found.group(1)
            if found := READY_LINE.search(line):
                self.console_url = found.group(1)
                self._ready.set()
        self._ready.set()  # the process ended: start() stops waiting and reports it

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)  # it ends at the pipe's end of file
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def startup_lines(self) -> list[str]:
        """Standard error up to and including the console line (what a newcomer reads)."""
        out: list[str] = []
        for line in self.stderr_lines:
            out.append(line)
            if READY_LINE.search(line):
                break
        return out


class Api:
    """The HTTP API through the gateway, as a client (seeding and cross-checks)."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def login(self, email: str, password: str) -> dict[str, str]:
        response = self.http.post("/api/auth/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['accessToken']}"}

    def register(self, email: str, password: str) -> str:
        response = self.http.post("/api/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        return str(response.json()["user"]["id"])

    def grant(self, admin: dict[str, str], user_id: str, amount: int) -> None:
        response = self.http.post(
            "/api/credits/grant",
            headers={**admin, "Idempotency-Key": str(uuid.uuid4())},
            json={"userId": user_id, "amount": amount, "reason": "adjustment", "note": "test funding"},
        )
        assert response.status_code == 201, response.text

    def usage(
        self, admin: dict[str, str], user_id: str, provider: str, model: str, tokens: int, request_id: str = ""
    ) -> int:
        response = self.http.post(
            "/api/usage/events",
            headers=admin,
            json={
                "requestId": request_id or f"console-{uuid.uuid4()}",
                "userId": user_id,
                "provider": provider,
                "model": model,
                "inputTokens": tokens,
                "outputTokens": tokens // 2,
            },
        )
        assert response.status_code == 201, response.text
        return int(response.json()["credits"])

    def get(self, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        return self.http.get(path, headers=headers, params=params)


def new_email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


def sign_in(page: Any, system: System, email: str, password: str) -> None:
    """Through the form, by accessible names, as a person (or a screen reader) finds them."""
    page.goto(system.console_url)
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.get_by_role("heading", name="Dashboard", level=1).wait_for()
