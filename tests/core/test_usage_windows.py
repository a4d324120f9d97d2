"""The wide usage rows (``usage_windows``, one per subject and model holding every period's
current window) and their narrow fallback (``usage_counters``), on both backends: rollover,
increments older than the row's windows, settles, purge, backdated batch events."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

import httpx
import pytest
from sqlalchemy import func, select

from aihub.core.usage import limits
from aihub.core.usage import service as usage
from aihub.kit.runtime import Runtime
from aihub.models import QuotaLimit, UsageCounter, UsageWindow
from tests.conftest import Caller
from tests.core.test_usage import event, fund, reporter

MODEL = "openai/gpt-4o"
SUBJECT = limits.user_subject(uuid.UUID(int=7))
T0 = dt.datetime(2026, 12, 1, 20, 40, 10, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=1)  # the next minute, the same hour and day


async def _add(rt: Runtime, now: dt.datetime, *, credits: int = 0, tokens: int = 0, subject: str = SUBJECT) -> None:
    tx = rt.tx()
    try:
        await limits.add(tx.session, [subject], MODEL, now, credits=credits, tokens=tokens, requests=1)
        await tx.commit()
    finally:
        await tx.close()


async def _used(rt: Runtime, rows: Sequence[limits.Row]) -> dict[limits.Row, limits.Amounts]:
    tx = rt.tx()
    try:
        return await limits.used(tx.session, rows)
    finally:
        await tx.close()


async def _adjust(rt: Runtime, rows: Sequence[limits.Row], credits: int) -> None:
    tx = rt.tx()
    try:
        await limits.adjust(tx.session, rows, credits=credits, tokens=0, requests=0)
        await tx.commit()
    finally:
        await tx.close()


async def _rows(rt: Runtime, table: type) -> int:
    tx = rt.tx()
    try:
        return int((await tx.session.execute(select(func.count()).select_from(table))).scalar_one())
    finally:
        await tx.close()


def _row(kind: str, now: dt.datetime, model: str = limits.ALL_MODELS, subject: str = SUBJECT) -> limits.Row:
    return (subject, limits.window(kind, now).key, model)


@pytest.mark.parametrize("kind", limits.PERIODS)
def test_a_window_key_reads_back_as_its_window_and_keys_order_as_time(kind: str) -> None:
    moments = [T0, T1, dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC)]
    for moment in moments:
        assert limits.window_of_key(limits.window(kind, moment).key) == (kind, limits.window(kind, moment))
    keys = [limits.window(kind, moment).key for moment in moments]
    assert sorted(keys) == keys  # the upsert compares keys as strings


async def test_a_new_minute_resets_the_minute_and_keeps_the_day(runtime: Runtime) -> None:
    await _add(runtime, T0, credits=10, tokens=100)
    await _add(runtime, T0 + dt.timedelta(seconds=5), credits=1, tokens=1)
    await _add(runtime, T1, credits=5, tokens=50)
    used = await _used(runtime, [_row("minute", T1), _row("day", T1), _row("minute", T0), _row("hour", T0, MODEL)])
    assert used[_row("minute", T1)] == (5, 50, 1)
    assert used[_row("day", T1)] == (16, 151, 3)
    assert used[_row("hour", T0, MODEL)] == (16, 151, 3)
    # The minute the row rolled out is kept in usage_counters and still counts.
    assert used[_row("minute", T0)] == (11, 101, 2)
    assert await _rows(runtime, UsageWindow) == 2  # all models and the model, one row each
    assert await _rows(runtime, UsageCounter) == 2  # the rolled-out minute of each


async def test_an_older_increment_lands_in_usage_counters_and_counts(runtime: Runtime) -> None:
    await _add(runtime, T1, credits=5)
    await _add(runtime, T0, credits=3)  # a writer whose clock is behind, committing after
    used = await _used(runtime, [_row("minute", T0), _row("minute", T1), _row("day", T0), _row("minute", T0, MODEL)])
    assert used[_row("minute", T0)] == (3, 0, 1)
    assert used[_row("minute", T0, MODEL)] == (3, 0, 1)
    assert used[_row("minute", T1)] == (5, 0, 1)
    assert used[_row("day", T0)] == (8, 0, 2)  # the same day: the wide row took it
    tx = runtime.tx()
    try:
        narrow = (await tx.session.execute(select(UsageCounter.period_key, UsageCounter.credits))).all()
    finally:
        await tx.close()
    assert sorted(narrow) == [(limits.window("minute", T0).key, 3)] * 2


async def test_a_settle_adjusts_the_wide_row_then_after_rollover_the_narrow_one(runtime: Runtime) -> None:
    reserved = limits.rows_for([SUBJECT], MODEL, T0)
    await _add(runtime, T0, credits=10)
    await _adjust(runtime, reserved, -4)  # the wide row still holds T0's windows
    used = await _used(runtime, [_row("minute", T0), _row("day", T0, MODEL)])
    assert used == {_row("minute", T0): (6, 0, 1), _row("day", T0, MODEL): (6, 0, 1)}
    assert await _rows(runtime, UsageCounter) == 0
    await _add(runtime, T1, credits=5)  # rolls T0's minute out to usage_counters
    await _adjust(runtime, reserved, -2)
    used = await _used(runtime, [_row("minute", T0), _row("minute", T1), _row("day", T0)])
    assert used[_row("minute", T0)] == (4, 0, 1)  # adjusted in usage_counters
    assert used[_row("minute", T1)] == (5, 0, 1)  # not T1's minute
    assert used[_row("day", T0)] == (9, 0, 2)  # 10 - 4 + 5 - 2, in the wide row
    await _adjust(runtime, reserved, -100)
    used = await _used(runtime, [_row("minute", T0), _row("day", T0)])
    assert used == {_row("minute", T0): (0, 0, 1), _row("day", T0): (0, 0, 2)}  # never below zero


async def test_a_reservation_from_before_the_wide_rows_settles_in_usage_counters(runtime: Runtime) -> None:
    """An authorization counted before 0017 has every row in usage_counters; a wide row holding
    the same windows since (a later call) keeps its own count when that one is given back."""
    reserved = limits.rows_for([SUBJECT], MODEL, T0)
    tx = runtime.tx()
    try:
        end = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
        tx.session.add_all(
            UsageCounter(subject=s, period_key=k, model=m, credits=40, tokens=0, requests=1, period_end=end)
            for s, k, m in reserved
        )
        await tx.commit()
    finally:
        await tx.close()
    await _add(runtime, T0, credits=10)  # a call after the upgrade, in the same windows
    assert (await _used(runtime, [_row("day", T0)]))[_row("day", T0)] == (50, 0, 2)
    tx = runtime.tx()
    try:
        await limits.adjust(tx.session, reserved, credits=-40, tokens=0, requests=-1, wide=False)
        await tx.commit()
    finally:
        await tx.close()
    used = await _used(runtime, [_row("day", T0), _row("minute", T0, MODEL)])
    assert used == {_row("day", T0): (10, 0, 1), _row("minute", T0, MODEL): (10, 0, 1)}


async def test_the_purge_drops_wide_rows_whose_windows_all_ended(runtime: Runtime) -> None:
    # 31 December 2026 is a Thursday: its week ends on Monday 4 January, after its month.
    late = dt.datetime(2026, 12, 31, 12, tzinfo=dt.UTC)
    other, moved_on = limits.user_subject(uuid.UUID(int=8)), limits.user_subject(uuid.UUID(int=9))
    await _add(runtime, late, credits=1)
    await _add(runtime, dt.datetime(2027, 1, 4, 12, tzinfo=dt.UTC), credits=1, subject=other)
    await _add(runtime, late, credits=1, subject=moved_on)
    await _add(runtime, dt.datetime(2027, 1, 3, 12, tzinfo=dt.UTC), credits=1, subject=moved_on)  # ends 1 February

    async def purge(now: dt.datetime) -> int:
        tx = runtime.tx()
        try:
            removed = await limits.purge_finished(tx, now)
            await tx.commit()
            return removed
        finally:
            await tx.close()

    # The month ended, its week has not; moved_on's December windows it rolled out have: 8 rows.
    assert await purge(dt.datetime(2027, 1, 5, tzinfo=dt.UTC)) == 8
    assert await _rows(runtime, UsageWindow) == 6
    week = _row("week", late)
    assert (await _used(runtime, [week]))[week] == (1, 0, 1)
    assert await purge(dt.datetime(2027, 1, 6, 1, tzinfo=dt.UTC)) == 2  # the week ended two days ago
    assert (await _used(runtime, [week]))[week] == (0, 0, 0)
    assert await _rows(runtime, UsageWindow) == 4  # the other subjects' rows stay


async def test_a_backdated_event_counts_toward_its_own_day(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    await fund(runtime, user.id, 1000)
    headers = reporter(runtime)
    quota = {"period": "day", "maxRequests": 2}
    assert (await client.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json=quota)).status_code == 201
    now = dt.datetime.now(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    earlier_today = midnight + (now - midnight) / 2

    async def post(*events: dict[str, object]) -> list[int]:
        response = await client.post("/api/usage/events/batch", headers=headers, json={"events": list(events)})
        return [r["status"] for r in response.json()["results"]]

    assert await post(event(user, "w-now")) == [201]
    assert await post(event(user, "w-back", occurredAt=earlier_today.isoformat())) == [201]
    assert await post(event(user, "w-third")) == [429]  # the backdated one took today's second request
    mine = (await client.get("/api/usage/quota", headers=user.headers)).json()
    assert mine["used"]["requests"] == 2


async def test_calls_behind_a_row_that_moved_ahead_are_counted_and_limited(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    """A writer whose clock runs ahead moved the user's wide rows two hours on: this hour's
    events land in usage_counters, and the hour's limit still holds on them."""
    await fund(runtime, user.id, 1000)
    subject = limits.user_subject(uuid.UUID(user.id))
    await _add(runtime, dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), subject=subject)
    quota = {"period": "hour", "maxRequests": 3}
    assert (await client.put(f"/api/quotas/user:{user.id}", headers=admin.headers, json=quota)).status_code == 201
    events = [event(user, f"s-{i}", inputTokens=10, outputTokens=0) for i in range(4)]
    response = await client.post("/api/usage/events/batch", headers=reporter(runtime), json={"events": events})
    assert [r["status"] for r in response.json()["results"]] == [201, 201, 201, 429]
    mine = (await client.get("/api/usage/quota", headers=user.headers)).json()
    assert mine["used"]["requests"] == 3
    hour = limits.window("hour", dt.datetime.now(dt.UTC)).key
    tx = runtime.tx()
    try:
        narrow = await tx.session.execute(
            select(UsageCounter.requests).where(
                UsageCounter.subject == subject, UsageCounter.period_key == hour, UsageCounter.model == ""
            )
        )
        assert narrow.scalar_one() == 3
    finally:
        await tx.close()


@pytest.mark.postgres
async def test_concurrent_calls_admit_exactly_the_limit_on_the_wide_and_the_narrow_rows(pg_runtime: Runtime) -> None:
    """20 calls in this hour and 20 two hours on (a writer whose clock runs ahead), all at once,
    against 5 requests an hour: the later ones count in the wide rows, this hour's behind them
    in usage_counters, and each hour admits exactly 5."""
    rt = pg_runtime
    user_id = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    ahead = now + dt.timedelta(hours=2)
    tx = rt.tx()
    try:
        tx.session.add(QuotaLimit(scope=f"user:{user_id}", position=0, period="hour", model="", max_requests=5))
        await tx.commit()
    finally:
        await tx.close()
    await _add(rt, ahead, subject=limits.user_subject(user_id))  # the rows are ahead before the race

    async def call(at: dt.datetime) -> bool:
        tx = rt.tx()
        try:
            await usage.count_call(
                tx, user_id=user_id, key_id=None, provider="openai", model="gpt-4o", credits=1, tokens=1, now=at
            )
            await tx.commit()
            return True
        except usage.QuotaExceeded:
            return False
        finally:
            await tx.close()

    admitted = await asyncio.gather(*(call(at) for _ in range(20) for at in (now, ahead)))
    assert sum(admitted[0::2]) == 5 and sum(admitted[1::2]) == 4  # the first call ahead counted one already
    rows = [
        _row("hour", now, subject=limits.user_subject(user_id)),
        _row("hour", ahead, subject=limits.user_subject(user_id)),
    ]
    used = await _used(rt, rows)
    assert [amounts[2] for amounts in (used[rows[0]], used[rows[1]])] == [5, 5]
