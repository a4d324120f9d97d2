"""Upstream groups: least-outstanding choice over healthy instances, active and passive health.

An instance leaves rotation when its health check fails (``/health/ready`` for our own auth
and core, so a draining or broken instance is out; ``/health`` elsewhere), when one of its
responses says it is draining (``X-Aihub-Draining``: it is shutting down, so the gateway stops
sending at once instead of at the next check), or after N consecutive connection failures
(passive ejection, for ``eject_seconds``). It comes back when a health check passes or the
ejection ends. Ties go round robin so that idle instances share evenly.

When no instance is in rotation but some still answer their checks (every one reports a
shared dependency down, or all are draining), requests go to those anyway: they answer for
themselves, which beats turning a degraded service into a gateway-made outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
import structlog

from aihub.gateway import metrics

log = structlog.get_logger("aihub.gateway.balancer")


class Lease:
    """``with instance.lease:`` counts one request as outstanding on the instance for as long
    as it runs, however it ends (an answer, an error, a cancellation). Made once per instance
    and shared by its requests (it keeps no state of theirs): taking it allocates nothing."""

    __slots__ = ("_instance",)

    def __init__(self, instance: Instance) -> None:
        self._instance = instance

    def __enter__(self) -> None:
        self._instance.outstanding += 1

    # Three named parameters, not ``*args``: no tuple is built per request.
    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._instance.outstanding -= 1


@dataclass(eq=False)
class Instance:
    group: str
    url: str
    outstanding: int = 0  # requests in flight to it: taken with ``lease``
    failures: int = 0
    healthy: bool = True  # the last active check; optimistic until the first one runs
    answered: bool = True  # the last check got an HTTP answer (whatever its status)
    draining: bool = False  # a response said it is shutting down; cleared by a passing check
    ejected_until: float = 0.0
    check_failures: int = 0
    lease: Lease = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.lease = Lease(self)

    def available(self, now: float) -> bool:
        return self.healthy and not self.draining and self.ejected_until <= now

    def reachable(self, now: float) -> bool:
        return self.answered and self.ejected_until <= now

    def publish(self, now: float) -> None:
        metrics.UPSTREAM_HEALTHY.labels(self.group, self.url).set(1 if self.available(now) else 0)


@dataclass(eq=False)
class Group:
    name: str
    instances: list[Instance]
    eject_after: int
    eject_seconds: float
    health_path: str = "/health"
    _turn: int = field(default=0)

    def pick(self, exclude: Instance | None = None) -> Instance | None:
        now = time.monotonic()
        count = len(self.instances)
        if count == 1:  # the common deployment: no order to build, no choice to make
            only = self.instances[0]
            return only if only is not exclude and (only.available(now) or only.reachable(now)) else None
        self._turn = (self._turn + 1) % count
        order = [self.instances[(self._turn + offset) % count] for offset in range(count)]
        best = _least_busy(inst for inst in order if inst is not exclude and inst.available(now))
        if best is None:  # nothing in rotation: the ones that still answer (see the module doc)
            best = _least_busy(inst for inst in order if inst is not exclude and inst.reachable(now))
        return best

    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(1 for inst in self.instances if inst.available(now))

    def success(self, inst: Instance) -> None:
        inst.failures = 0

    def draining(self, inst: Instance) -> None:
        if not inst.draining:
            inst.draining = True
            inst.publish(time.monotonic())
            log.info("upstream_draining", group=self.name, instance=inst.url)

    def failure(self, inst: Instance) -> None:
        inst.failures += 1
        if inst.failures >= self.eject_after and inst.ejected_until <= time.monotonic():
            inst.ejected_until = time.monotonic() + self.eject_seconds
            inst.publish(time.monotonic())
            log.warning("upstream_ejected", group=self.name, instance=inst.url, failures=inst.failures)


def _least_busy(candidates: Iterable[Instance]) -> Instance | None:
    best: Instance | None = None
    for inst in candidates:
        if best is None or inst.outstanding < best.outstanding:
            best = inst
    return best


class Balancer:
    def __init__(
        self,
        upstreams: dict[str, list[str]],
        *,
        eject_after: int,
        eject_seconds: float,
        health_interval: float,
        health_paths: dict[str, str] | None = None,
    ) -> None:
        paths = health_paths or {}
        self.groups = {
            name: Group(
                name,
                [Instance(name, url.rstrip("/")) for url in urls],
                eject_after,
                eject_seconds,
                health_path=paths.get(name, "/health"),
            )
            for name, urls in upstreams.items()
        }
        self.health_interval = health_interval
        self._task: asyncio.Task[None] | None = None
        now = time.monotonic()
        for group in self.groups.values():
            for inst in group.instances:
                inst.publish(now)

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.get_running_loop().create_task(self._check_forever(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _check_forever(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.check_all(session)
            await asyncio.sleep(self.health_interval)

    async def check_all(self, session: aiohttp.ClientSession) -> None:
        checks = [(group.health_path, inst) for group in self.groups.values() for inst in group.instances]
        await asyncio.gather(*(self._check(session, path, inst) for path, inst in checks))

    async def _check(self, session: aiohttp.ClientSession, path: str, inst: Instance) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        status: int | None
        try:
            async with session.get(inst.url + path, timeout=timeout) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = None
        inst.answered = status is not None
        inst.check_failures = 0 if status == 200 else inst.check_failures + 1
        if status is None:
            # One slow answer on a busy machine is not an outage: two failed checks in a row are.
            ok = inst.healthy and inst.check_failures < 2
        else:
            # An answer is believed at once: a 503 says draining or a dependency down.
            ok = status == 200
        if ok != inst.healthy:
            log.info("upstream_health", group=inst.group, instance=inst.url, healthy=ok, status=status)
        inst.healthy = ok
        if status == 200:
            # A passing check ends a draining mark (the instance restarted) and a passive
            # ejection early: the instance is back.
            inst.draining = False
            inst.ejected_until = 0.0
            inst.failures = 0
        inst.publish(time.monotonic())

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"healthy": group.healthy_count(), "total": len(group.instances)}
            for name, group in self.groups.items()
        }
