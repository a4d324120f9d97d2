"""Background work of the usage domain: the daily rollups.

Each tick recomputes the days from ``lookback`` days before the completeness mark up to
yesterday (the first run on an existing table: every day since the first event), one
transaction per day, then moves the mark. Recomputing recent days again catches events that
committed late (an event is stamped when its transaction starts, so one begun at 23:59:59.9
may commit after midnight). A day only counts as over ``GRACE`` after its midnight.

Safe on several instances or workers at once: a day's upsert is idempotent and runs under a
per-day lock (PostgreSQL advisory lock; SQLite has one writer anyway), so the last writer
read the newest rows; the mark only ever moves forward.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import structlog

from aihub.core.usage import limits, rollups
from aihub.kit.db import utcnow
from aihub.kit.jobs import Periodic, job
from aihub.kit.runtime import Runtime

log = structlog.get_logger("aihub.usage")
ROLLUP_JOB = "usage.rollup_daily"
# Longer than any usage transaction may take: a day is final this long after its midnight.
GRACE = dt.timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class RollupRun:
    days: int
    complete_until: dt.date | None


async def rollup(runtime: Runtime, *, now: dt.datetime | None = None, lookback_days: int | None = None) -> RollupRun:
    """Bring the rollups up to date as of ``now`` (default: the clock)."""
    now = now or utcnow()
    lookback = runtime.settings.usage_rollup_lookback_days if lookback_days is None else lookback_days
    target = (now - GRACE).astimezone(dt.UTC).date()  # every day before it is over
    tx = runtime.tx()
    try:
        mark = await rollups.complete_until(tx.session)
        first = (min(mark, target) - dt.timedelta(days=lookback)) if mark else await rollups.earliest_day(tx.session)
    finally:
        await tx.close()
    days = 0
    day = first
    while day is not None and day < target:
        tx = runtime.tx()
        try:
            await rollups.recompute_day(tx.session, day)
            await tx.commit()
        finally:
            await tx.close()
        days += 1
        day += dt.timedelta(days=1)
    tx = runtime.tx()
    try:
        await rollups.advance(tx.session, target)
        await tx.commit()
    finally:
        await tx.close()
    if days:
        log.info("usage.rolled_up", days=days, complete_until=target.isoformat())
    return RollupRun(days=days, complete_until=target)


@job(ROLLUP_JOB)
async def rollup_daily(runtime: Runtime, payload: dict[str, Any]) -> None:
    await rollup(runtime)


PURGE_COUNTERS_JOB = "usage.purge_counters"


@job(PURGE_COUNTERS_JOB)
async def purge_counters(runtime: Runtime, payload: dict[str, Any]) -> None:
    """Drop the usage windows and counters of windows that ended days ago (quotas only read
    current ones)."""
    tx = runtime.tx()
    try:
        removed = await limits.purge_finished(tx)
        await tx.commit()
    finally:
        await tx.close()
    if removed:
        log.info("usage.counters_purged", rows=removed)


def periodic(runtime: Runtime) -> list[Periodic]:
    interval = runtime.settings.usage_rollup_interval_seconds
    jobs = [Periodic(ROLLUP_JOB, interval)] if interval > 0 else []
    return [*jobs, Periodic(PURGE_COUNTERS_JOB, 3600.0)]
