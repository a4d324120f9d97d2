"""Background jobs on taskiq: a Redis stream in production, in-process on the embedded default.

* ``@job("name")`` registers an ``async def f(runtime, payload: dict) -> None`` once, at import.
* ``await jobs_of(runtime).enqueue("name", payload)`` sends one; from a request, call it from
  ``Tx.after_commit`` so a rolled-back request sends nothing.
* ``start()`` consumes the queue and runs the periodic jobs, in ``aihub worker`` processes
  and (unless ``AIHUB_CORE_RUN_JOBS=false``) in serving core processes; every process may run
  them, so periodic jobs must be safe to run concurrently (the hold sweep claims rows with one
  conditional UPDATE / SKIP LOCKED). A process that does not start them still enqueues.
* ``close()`` stops taking new work and waits for running jobs, bounded by
  ``AIHUB_SHUTDOWN_TIMEOUT_SECONDS``; a queued job fetched but not finished stays pending in
  the stream and another consumer claims it later (taskiq-redis' idle reclaim).

Why taskiq: async-native (our jobs are database and HTTP I/O on the same event loop as the
service), typed, maintained, with an in-memory broker that runs a job as a task of the
current loop (the embedded default needs no Redis) and ``taskiq-redis`` stream brokers with
consumer groups and acknowledgements in production (a job survives a crashed instance).
Periodic jobs are ticked in-process rather than by taskiq's separate scheduler process:
their work is idempotent by construction, so a tick on every instance is harmless and
there is no extra process to deploy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from taskiq import AsyncBroker, InMemoryBroker
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker

from aihub.kit.slots import Slot

if TYPE_CHECKING:
    from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.jobs")
JobFunc = Callable[["Runtime", dict[str, Any]], Awaitable[None]]
_REGISTRY: dict[str, JobFunc] = {}
_JOBS: Slot[Jobs] = Slot("jobs")
QUEUE = "aihub:jobs"
# Delivered entries stay in a Redis stream until trimmed: keep the newest ones only (far more
# than any backlog a healthy system has; trimming is approximate, so cheap).
QUEUE_MAXLEN = 100_000
_RESTART_DELAY = 1.0


def job(name: str) -> Callable[[JobFunc], JobFunc]:
    """Register a job under a stable name (the name travels in the queue, not the function)."""

    def register(func: JobFunc) -> JobFunc:
        _REGISTRY[name] = func
        return func

    return register


@dataclass
class Periodic:
    name: str
    interval: float
    payload: dict[str, Any] = field(default_factory=dict)


class Jobs:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        url = runtime.settings.redis_url
        self.broker: AsyncBroker = (
            # consumer_id "0": the group, when the first consumer creates it, starts at the
            # beginning of the stream, so jobs enqueued before any worker ever ran are not lost.
            RedisStreamBroker(url, queue_name=QUEUE, consumer_group_name="aihub", consumer_id="0", maxlen=QUEUE_MAXLEN)
            if url
            else InMemoryBroker(await_inplace=False, max_async_tasks=64)
        )
        self._tasks: dict[str, Any] = {}
        self._register_new()
        self._background: list[asyncio.Task[None]] = []
        self._finish = asyncio.Event()
        self._started = False

    def _bind(self, name: str, func: JobFunc) -> Callable[[dict[str, Any]], Awaitable[None]]:
        runtime = self.runtime

        async def run(payload: dict[str, Any]) -> None:
            try:
                await func(runtime, payload)
            except Exception:  # logged with the job name; the worker goes on with the next job
                log.exception("job.failed", job=name)
                raise

        run.__name__ = name.replace(".", "_")
        return run

    def _register_new(self) -> None:
        # Domains register their jobs when imported, which may happen after this queue was made
        # (a worker builds the queue, then imports the domains listing their periodic jobs).
        for name, func in _REGISTRY.items():
            if name not in self._tasks:
                self._tasks[name] = self.broker.register_task(self._bind(name, func), task_name=name)

    async def enqueue(self, name: str, payload: dict[str, Any]) -> None:
        self._register_new()
        if name not in self._tasks:
            raise KeyError(f"unknown job {name!r}")
        await self._tasks[name].kiq(payload)

    async def start(self, periodic: list[Periodic] | None = None) -> None:
        """Consume the queue (Redis) and tick the periodic jobs, in this process."""
        if self._started:
            return
        self._started = True
        self._register_new()
        await self.broker.startup()
        if not isinstance(self.broker, InMemoryBroker):
            self._background.append(asyncio.create_task(self._consume()))
        for item in periodic or []:
            self._background.append(asyncio.create_task(self._tick(item)))

    async def _consume(self) -> None:
        """Listen to the stream until closed; a lost Redis connection restarts the listener
        instead of leaving a process that looks alive and consumes nothing."""
        while not self._finish.is_set():
            receiver = Receiver(self.broker, max_async_tasks=32, run_startup=False)
            try:
                await receiver.listen(self._finish)
            except Exception:
                log.exception("jobs.consumer_failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finish.wait(), timeout=_RESTART_DELAY)

    @property
    def running(self) -> bool:
        """Started and not closed (a worker's readiness)."""
        return self._started and not self._finish.is_set()

    async def _tick(self, item: Periodic) -> None:
        while not self._finish.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finish.wait(), timeout=item.interval)
                return
            try:
                # Run inline: enqueueing every tick on every instance would only pile up copies.
                await _REGISTRY[item.name](self.runtime, item.payload)
            except Exception:  # a failed tick is logged; the next one tries again
                log.exception("job.periodic_failed", job=item.name)

    async def wait_idle(self) -> None:
        """In-memory broker: wait for the jobs already sent (tests, graceful shutdown)."""
        if isinstance(self.broker, InMemoryBroker):
            await self.broker.wait_all()

    async def close(self) -> None:
        """Stop taking work; wait for running jobs up to the shutdown timeout, then cancel them."""
        self._finish.set()
        if self._background:
            _done, pending = await asyncio.wait(
                self._background, timeout=self.runtime.settings.shutdown_timeout_seconds
            )
            for task in pending:
                log.warning("jobs.cancelled_at_shutdown", task=task.get_name())
                task.cancel()
            for task in self._background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_idle(), timeout=self.runtime.settings.shutdown_timeout_seconds)
        await self.broker.shutdown()


def jobs_of(runtime: Runtime) -> Jobs:
    """The process's job queue, created on first use and closed with the runtime."""
    existing = runtime.extras.get(_JOBS)
    if existing is None:
        existing = Jobs(runtime)
        runtime.extras.set(_JOBS, existing)
        runtime.on_close(existing.close)
    return existing
