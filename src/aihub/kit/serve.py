"""Run one or several ASGI apps in this process, one event loop, one port each.

On SIGTERM or SIGINT every app first reports not-ready (so a load balancer stops sending),
then every server stops accepting and finishes its in-flight requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Generator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals are handled once for all servers of the process (see serve_apps).
        yield


@dataclass(frozen=True)
class Listener:
    name: str
    app: FastAPI
    host: str
    port: int


def _config(listener: Listener) -> uvicorn.Config:
    return uvicorn.Config(
        listener.app,
        host=listener.host,
        port=listener.port,
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


async def serve_apps(listeners: list[Listener], *, drain_seconds: float = 0.0) -> None:
    servers = [_Server(_config(listener)) for listener in listeners]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for listener in listeners:
            listener.app.state.draining = True

        async def later() -> None:
            await asyncio.sleep(drain_seconds)
            for server in servers:
                server.should_exit = True

        loop.create_task(later())  # noqa: RUF006 - the loop keeps running until the servers end

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    await asyncio.gather(*(server.serve() for server in servers))
