"""Real ``aihub`` processes for the operations tests: start, wait until ready, signal, reap.

Output goes to a file, not a pipe: a busy service writing JSON logs into a pipe nobody reads
would block once the pipe is full.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def aihub_env(**values: str) -> dict[str, str]:
    """The test runner's environment without its AIHUB_* variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIHUB_")}
    env.update({"AIHUB_ENV": "test", **values})
    return env


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    port: int | None
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float = 60) -> int:
        """Wait for the process to end (without blocking the event loop); its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"{self.name} did not exit in time:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path, port: int | None = None) -> Proc:
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aihub", *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log_dir
        )
    return Proc(name, proc, port, log)


async def wait_ready(proc: Proc, path: str = "/health/ready", timeout: float = 60) -> None:
    """Until ``path`` answers 200; fails at once if the process died."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            if proc.proc.poll() is not None:
                raise AssertionError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.output()[-3000:]}")
            try:
                if (await client.get(proc.url + path)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} was not ready in time:\n{proc.output()[-3000:]}")
            await asyncio.sleep(0.05)


async def wait_status(url: str, status: int, timeout: float = 30) -> httpx.Response:
    """Poll ``url`` until it answers ``status``."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                response = await client.get(url)
                if response.status_code == status:
                    return response
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered {status}"
            await asyncio.sleep(0.05)


async def wait_refused(url: str, timeout: float = 30) -> None:
    """Poll until a new connection to ``url`` is refused: the server stopped accepting."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            try:
                await client.get(url, headers={"Connection": "close"})
            except httpx.ConnectError:
                return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url} kept accepting connections"
            await asyncio.sleep(0.05)
