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

Several workers (``aihub serve <service> --workers N``): ``supervise`` starts N processes of
the same service, each binding the port with SO_REUSEPORT (the kernel spreads connections
over them) and opening its own Redis and database connections. Signals sent to the
supervisor go to every worker, so SIGTERM drains all of them as above; a worker that dies
is started again. Metrics are aggregated with prometheus_client's multiprocess mode: the
supervisor gives the workers one ``PROMETHEUS_MULTIPROC_DIR``, and whichever worker answers
``/metrics`` reports the sum over all (gauges per worker, with a ``pid`` label).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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
    # An aiohttp app's runner: the gateway's answers unparsable requests in its error shape.
    runner: Callable[..., web.AppRunner] = web.AppRunner


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


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other workers bind too (SO_REUSEPORT: the kernel balances)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve_aiohttp(
    listener: Listener,
    stopping: asyncio.Event,
    timeout_seconds: int,
    started: asyncio.Event,
    reuse_port: bool = False,
) -> None:
    assert isinstance(listener.app, web.Application)
    runner = listener.runner(
        listener.app, access_log=None, handle_signals=False, shutdown_timeout=float(timeout_seconds)
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, listener.host, listener.port, backlog=1024, reuse_port=reuse_port or None)
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
    reuse_port: bool = False,
) -> None:
    """Serve until a signal, then drain, stop accepting and finish in-flight work (see above).

    ``on_started`` runs once every listener accepts connections (the CLI's last start-up line).
    With no listeners (a worker without a port) it only waits for the signal. ``reuse_port``:
    one of several workers sharing each port."""
    shutdown = Shutdown(listeners, drain_seconds)
    shutdown.install()
    asgi = [listener for listener in listeners if not isinstance(listener.app, web.Application)]
    native = [listener for listener in listeners if isinstance(listener.app, web.Application)]
    servers = [_Server(_config(listener, timeout_seconds)) for listener in asgi]
    sockets = [[reuse_port_socket(listener.host, listener.port)] if reuse_port else None for listener in asgi]

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
        *(server.serve(sockets=socks) for server, socks in zip(servers, sockets, strict=True)),
        *(
            _serve_aiohttp(listener, shutdown.stopping, timeout_seconds, started, reuse_port)
            for listener, started in zip(native, native_started, strict=True)
        ),
    )
    log.info("shutdown.servers_stopped")


# ---------------------------------------------------------------------------- several workers

WORKER_INDEX_ENV = "AIHUB_SERVE_WORKER_INDEX"  # not a setting: set by the supervisor only
WORKER_COUNT_ENV = "AIHUB_SERVE_WORKERS"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one per CPU."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    count = int(value)
    if not 1 <= count <= 256:
        raise ValueError("--workers must be from 1 to 256, or auto")
    return count


def this_worker() -> tuple[int, int]:
    """(index, count) of this process among the supervisor's workers; (0, 1) when alone."""
    try:
        return int(os.environ[WORKER_INDEX_ENV]), int(os.environ[WORKER_COUNT_ENV])
    except (KeyError, ValueError):
        return 0, 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # A SIGKILLed supervisor must not leave workers holding the port.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Supervisor:
    """N worker processes running ``command``; signals forwarded; dead workers restarted."""

    def __init__(self, command: list[str], count: int) -> None:
        self.command = command
        self.count = count
        self.stopping = False
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._own_dir: str | None = None

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env[WORKER_INDEX_ENV] = str(index)
        env[WORKER_COUNT_ENV] = str(self.count)
        return env

    def _spawn(self, index: int) -> None:
        # Our own interpreter and arguments; preexec_fn only sets the parent-death signal.
        self.procs[index] = subprocess.Popen(  # noqa: S603
            self.command, env=self._env(index), preexec_fn=_die_with_parent
        )

    def _signal(self, sig: int, _frame: object) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def run(self) -> int:
        if not os.environ.get(MULTIPROC_ENV):
            self._own_dir = tempfile.mkdtemp(prefix="aihub-metrics-")
            os.environ[MULTIPROC_ENV] = self._own_dir
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signal)
        try:
            for index in range(self.count):
                self._spawn(index)
            log.info("workers.started", workers=self.count, pids=[p.pid for p in self.procs.values()])
            return self._watch()
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if self._own_dir is not None:
                shutil.rmtree(self._own_dir, ignore_errors=True)

    def _watch(self) -> int:
        codes: dict[int, int] = {}
        while True:
            for index, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or index in codes:
                    continue
                _mark_dead(proc.pid)
                if self.stopping:
                    codes[index] = code
                    continue
                log.error("workers.died", worker=index, pid=proc.pid, exit_code=code)
                time.sleep(0.5)  # a worker that dies at start must not spin the supervisor
                if not self.stopping:
                    self._spawn(index)
            if self.stopping and len(codes) == len(self.procs):
                log.info("workers.stopped", exit_codes=sorted(codes.values()))
                # Any worker that did not exit 0 (a signal while it was still starting, a
                # failed drain) makes the whole stop unclean: 1, or the worker's own code.
                failed = [code for code in codes.values() if code != 0]
                return (max(failed) if max(failed) > 0 else 1) if failed else 0
            time.sleep(0.1)


def _mark_dead(pid: int) -> None:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def supervise(argv: list[str], count: int) -> int:
    """Run ``aihub <argv>`` as ``count`` workers (see the module docstring); the exit code."""
    return Supervisor([sys.executable, "-m", "aihub", *argv], count).run()
