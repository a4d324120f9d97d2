"""Upstream groups: least-outstanding choice over healthy instances, active and passive health.

An instance leaves rotation when its ``/health`` check fails or after N consecutive
connection failures (passive ejection, for ``eject_seconds``); it comes back when a health
check passes or the ejection ends. Ties go round robin so that idle instances share evenly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp
import structlog

from aihub.gateway import metrics

log = structlog.get_logger("aihub.gateway.balancer")


@dataclass(eq=False)
class Instance:
    group: str
    url: str
    outstanding: int = 0
    failures: int = 0
    healthy: bool = True  # the last active check; optimistic until the first one runs
    ejected_until: float = 0.0
    check_failures: int = 0

    def available(self, now: float) -> bool:
        return self.healthy and self.ejected_until <= now

    def publish(self, now: float) -> None:
        metrics.UPSTREAM_HEALTHY.labels(self.group, self.url).set(1 if self.available(now) else 0)


@dataclass(eq=False)
class Group:
    name: str
    instances: list[Instance]
    eject_after: int
    eject_seconds: float
    _turn: int = field(default=0)

    def pick(self, exclude: Instance | None = None) -> Instance | None:
        now = time.monotonic()
        best: Instance | None = None
        count = len(self.instances)
        self._turn = (self._turn + 1) % count
        for offset in range(count):
            inst = self.instances[(self._turn + offset) % count]
            if inst is exclude or not inst.available(now):
                continue
            if best is None or inst.outstanding < best.outstanding:
                best = inst
        return best

    def healthy_count(self) -> int:
        now = time.monotonic()
        return sum(1 for inst in self.instances if inst.available(now))

    def success(self, inst: Instance) -> None:
        inst.failures = 0

    def failure(self, inst: Instance) -> None:
        inst.failures += 1
        if inst.failures >= self.eject_after and inst.ejected_until <= time.monotonic():
            inst.ejected_until = time.monotonic() + self.eject_seconds
            inst.publish(time.monotonic())
            log.warning("upstream_ejected", group=self.name, instance=inst.url, failures=inst.failures)


class Balancer:
    def __init__(
        self,
        upstreams: dict[str, list[str]],
        *,
        eject_after: int,
        eject_seconds: float,
        health_interval: float,
    ) -> None:
        self.groups = {
            name: Group(name, [Instance(name, url.rstrip("/")) for url in urls], eject_after, eject_seconds)
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
        instances = [inst for group in self.groups.values() for inst in group.instances]
        await asyncio.gather(*(self._check(session, inst) for inst in instances))

    async def _check(self, session: aiohttp.ClientSession, inst: Instance) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        try:
            async with session.get(inst.url + "/health", timeout=timeout) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        # One slow answer on a busy machine is not an outage: two failed checks in a row are.
        inst.check_failures = 0 if ok else inst.check_failures + 1
        ok = ok or (inst.healthy and inst.check_failures < 2)
        if ok != inst.healthy:
            log.info("upstream_health", group=inst.group, instance=inst.url, healthy=ok)
        inst.healthy = ok
        if ok and inst.ejected_until:
            # A passing check ends a passive ejection early: the instance is back.
            inst.ejected_until = 0.0
            inst.failures = 0
        inst.publish(time.monotonic())

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"healthy": group.healthy_count(), "total": len(group.instances)}
            for name, group in self.groups.items()
        }
