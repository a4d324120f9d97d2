"""Run several apps in this process, one event loop, one port each, and stop them gracefully.

FastAPI apps (core, auth) run on uvicorn; the gateway is an aiohttp application and runs on
aiohttp's AppRunner/TCPSite in the same loop. Signals are handled once for all of them:

1. SIGTERM: every app turns not-ready (``/health/ready`` answers 503) and marks its responses
   as draining (``Connection: close``, and ``X-Aihub-Draining`` which the gateway reads to
   take the instance out of rotation at once), while it still serves everything;
2. after ``drain_seconds`` (time for load balancers to notice) every server stops accepting
   and closes its idle keep-alive connections;
3. in-flight requests finish, bounded by ``timeout_seconds`` (the gateway closes its
   WebSockets with 1001 "going away" on both sides);
4. ``serve_apps`` returns; the caller closes the jobs and the runtime and the process exits 0.

SIGINT (Ctrl-C at a terminal) skips the drain delay; a second signal ends the delay at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable, Generator
from dataclasses import dataclass

import structlog
import uvicorn
from aiohttp import web
from fastapi import FastAPI

log = structlog.get_logger("aihub.serve")
DRAINING_HEADER = "X-Aihub-Draining"


@dataclass
class DrainFlag:
    """Mutable so that a started (frozen) aiohttp application can still be told to drain."""

    draining: bool = False


DRAIN = web.AppKey("aihub_drain", DrainFlag)


def drain_flag(app: FastAPI | web.Application) -> DrainFlag:
    """The app's flag: an aiohttp app keeps it under ``DRAIN``, a FastAPI app on its state."""
    if isinstance(app, web.Application):
        return app[DRAIN] if DRAIN in app else DrainFlag()
    flag = getattr(app.state, "drain", None)
    if not isinstance(flag, DrainFlag):
        flag = DrainFlag()
        app.state.drain = flag
    return flag


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals are handled once for all servers of the process (see serve_apps).
        yield


@dataclass(frozen=True)
class Listener:
    name: str
    app: FastAPI | web.Application
    host: str
    port: int


def _config(listener: Listener, timeout_seconds: int) -> uvicorn.Config:
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
        timeout_graceful_shutdown=timeout_seconds,
    )


async def _serve_aiohttp(
    listener: Listener, stopping: asyncio.Event, timeout_seconds: int, started: asyncio.Event
) -> None:
    assert isinstance(listener.app, web.Application)
    runner = web.AppRunner(listener.app, access_log=None, handle_signals=False, shutdown_timeout=float(timeout_seconds))
    await runner.setup()
    try:
        site = web.TCPSite(runner, listener.host, listener.port, backlog=1024)
        await site.start()
        started.set()
        await stopping.wait()
    finally:
        # Stops accepting, closes idle connections, runs on_shutdown (WebSockets get 1001),
        # waits for in-flight handlers up to the timeout, then runs on_cleanup.
        await runner.cleanup()


def settle_heap() -> None:
    """Move everything allocated while starting (modules, apps, settings: ~185,000 objects in the
    gateway) out of the collector's sight, so that an oldest-generation collection under load
    walks only what serving created. Measured: full collections over that start-up heap took
    90–300 ms each, a pause every in-flight request would wait out."""
    gc.collect()
    gc.freeze()


class Shutdown:
    """The process's stop sequence: draining first, stopping after the drain delay."""

    def __init__(self, listeners: list[Listener], drain_seconds: float) -> None:
        self.flags = [drain_flag(listener.app) for listener in listeners]
        self.drain_seconds = drain_seconds
        self.stopping = asyncio.Event()
        self._skip_delay = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.signal, sig)

    def signal(self, sig: int) -> None:
        if self._timer is not None:
            self._skip_delay.set()  # a second signal: stop accepting now
            return
        delay = self.drain_seconds if sig == signal.SIGTERM else 0.0
        for flag in self.flags:
            flag.draining = True
        log.info("shutdown.draining", signal=signal.Signals(sig).name, drain_seconds=delay)
        self._timer = asyncio.get_running_loop().create_task(self._after(delay))

    async def _after(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._skip_delay.wait(), timeout=delay)
        log.info("shutdown.stopping")
        self.stopping.set()


async def serve_apps(
    listeners: list[Listener],
    *,
    drain_seconds: float = 0.0,
    timeout_seconds: int = 30,
    on_started: Callable[[], None] | None = None,
) -> None:
    """Serve until a signal, then drain, stop accepting and finish in-flight work (see above).

    ``on_started`` runs once every listener accepts connections (the CLI's last start-up line).
    With no listeners (a worker without a port) it only waits for the signal."""
    shutdown = Shutdown(listeners, drain_seconds)
    shutdown.install()
    asgi = [listener for listener in listeners if not isinstance(listener.app, web.Application)]
    native = [listener for listener in listeners if isinstance(listener.app, web.Application)]
    servers = [_Server(_config(listener, timeout_seconds)) for listener in asgi]

    native_started = [asyncio.Event() for _ in native]

    async def stop_uvicorn() -> None:
        await shutdown.stopping.wait()
        for server in servers:
            server.should_exit = True

    async def announce() -> None:
        if on_started is None:
            return
        for event in native_started:
            await event.wait()
        # uvicorn has no event for it: ``started`` turns true once its socket listens.
        while not all(server.started for server in servers):
            if shutdown.stopping.is_set():
                return
            await asyncio.sleep(0.05)
        if not shutdown.stopping.is_set():
            on_started()

    settle_heap()
    await asyncio.gather(
        stop_uvicorn(),
        announce(),
        *(server.serve() for server in servers),
        *(
            _serve_aiohttp(listener, shutdown.stopping, timeout_seconds, started)
            for listener, started in zip(native, native_started, strict=True)
        ),
    )
    log.info("shutdown.servers_stopped")
