"""Daily usage rollups: rollup-backed figures equal raw ones; the job is idempotent and concurrent-safe."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections import defaultdict
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from aihub.core.usage import rollups
from aihub.core.usage.jobs import rollup
from aihub.kit.db import utcnow
from aihub.kit.runtime import Runtime
from aihub.models import UsageDailyModelRollup, UsageDailyRollup, UsageEvent
from tests.conftest import Caller, _core_app, create_user
from tests.core.test_usage import event, fund, reporter

MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("google", "gemini-2.5-flash"),
]
MEASURES = ("requests", "input_tokens", "output_tokens", "credits")


async def report_events(client: httpx.AsyncClient, rt: Runtime, user: Caller, n: int, rng: random.Random) -> None:
    await fund(rt, user.id, 100_000)
    for _ in range(n):
        provider, model = rng.choice(MODELS)
        body = event(
            user,
            provider=provider,
            model=model,
            inputTokens=rng.randrange(0, 9000),
            outputTokens=rng.randrange(0, 3000),
        )
        response = await client.post("/api/usage/events", headers=reporter(rt), json=body)
        assert response.status_code == 201, response.text


async def place(rt: Runtime, event_ids: list[uuid.UUID], times: list[dt.datetime]) -> None:
    """Stamp events with past times (usage rows are stamped "now" at ingestion)."""
    tx = rt.tx()
    try:
        for event_id, when in zip(event_ids, times, strict=True):
            await tx.session.execute(update(UsageEvent).where(UsageEvent.id == event_id).values(created_at=when))
        await tx.commit()
    finally:
        await tx.close()


async def all_events(rt: Runtime) -> list[UsageEvent]:
    tx = rt.tx()
    try:
        return list((await tx.session.execute(select(UsageEvent).order_by(UsageEvent.created_at))).scalars())
    finally:
        await tx.close()


async def spread(rt: Runtime, rng: random.Random, keep_today: int) -> None:
    """Spread every event over the last 20 days, a few on exact midnights, ``keep_today`` left live."""
    now = utcnow()
    events = await all_events(rt)
    moved = events[keep_today:]
    times = []
    for i, _ in enumerate(moved):
        day = (now - dt.timedelta(days=rng.randrange(1, 20))).replace(hour=0, minute=0, second=0, microsecond=0)
        times.append(day if i % 7 == 0 else day + dt.timedelta(seconds=rng.randrange(86_400)))
    await place(rt, [e.id for e in moved], times)


def _within(e: UsageEvent, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    return (start is None or e.created_at >= start) and (end is None or e.created_at < end)


def raw_overview(events: list[UsageEvent], start: dt.datetime | None, end: dt.datetime | None) -> dict[str, Any]:
    """The overview's figures computed in Python from the raw rows (independent of the SQL)."""
    chosen = [e for e in events if _within(e, start, end)]

    def sums(rows: list[UsageEvent]) -> dict[str, int]:
        return {
            "requests": len(rows),
            "inputTokens": sum(e.input_tokens for e in rows),
            "outputTokens": sum(e.output_tokens for e in rows),
            "credits": sum(e.credits for e in rows),
        }

    by: dict[str, dict[Any, list[UsageEvent]]] = defaultdict(lambda: defaultdict(list))
    for e in chosen:
        by["provider"][e.provider].append(e)
        by["model"][(e.provider, e.model)].append(e)
        by["day"][e.created_at.astimezone(dt.UTC).date().isoformat()].append(e)
        by["user"][str(e.user_id)].append(e)
    return {
        "totals": sums(chosen),
        "activeUsers": len(by["user"]),
        "byProvider": [{"provider": p, **sums(rows)} for p, rows in sorted(by["provider"].items())],
        "byModel": [{"provider": p, "model": m, **sums(rows)} for (p, m), rows in sorted(by["model"].items())],
        "daily": [
            {"day": d, **sums(rows), "activeUsers": len({e.user_id for e in rows})}
            for d, rows in sorted(by["day"].items())
        ],
        "topUsers": {u: sums(rows) for u, rows in by["user"].items()},
    }


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """The overview minus ordering ties among top users (equal credits may come in any order)."""
    out = {k: body[k] for k in ("totals", "activeUsers", "byProvider", "byModel", "daily")}
    out["topUsers"] = {
        u["userId"]: {k: u[k] for k in ("requests", "inputTokens", "outputTokens", "credits")} for u in body["topUsers"]
    }
    return out


def windows(now: dt.datetime) -> list[tuple[dt.datetime | None, dt.datetime | None]]:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        (None, None),
        (midnight - dt.timedelta(days=12, hours=-7, minutes=-13), None),  # from inside a past day
        (None, midnight - dt.timedelta(days=3, hours=5)),  # to inside a past day
        (midnight - dt.timedelta(days=15), midnight - dt.timedelta(days=2)),  # whole days only
        (midnight - dt.timedelta(days=9, hours=-3), midnight - dt.timedelta(days=9, hours=-20)),  # inside one day
        (midnight - dt.timedelta(days=5, hours=2), now + dt.timedelta(hours=1)),  # past edge to beyond now
    ]


def _params(start: dt.datetime | None, end: dt.datetime | None, **extra: str) -> dict[str, str]:
    params = dict(extra)
    if start is not None:
        params["from"] = start.isoformat()
    if end is not None:
        params["to"] = end.isoformat()
    return params


async def snapshot(client: httpx.AsyncClient, admin: Caller, user: Caller) -> list[Any]:
    """Every figure the rollups feed, over several windows, through HTTP."""
    shots: list[Any] = []
    for start, end in windows(utcnow()):
        overview = await client.get("/api/analytics/overview", headers=admin.headers, params=_params(start, end))
        assert overview.status_code == 200, overview.text
        shots.append(comparable(overview.json()))
        for group in ("provider", "model", "day", "day_model"):
            for who in (admin, user):
                summary = await client.get(
                    "/api/usage/summary", headers=who.headers, params=_params(start, end, groupBy=group)
                )
                assert summary.status_code == 200, summary.text
                shots.append(summary.json())
        report = await client.get("/api/billing/report", headers=user.headers, params=_params(start, end))
        assert report.status_code == 200, report.text
        shots.append(report.json()["usage"])
    return shots


async def rollup_rows(rt: Runtime) -> dict[tuple[Any, ...], tuple[int, ...]]:
    tx = rt.tx()
    try:
        rows = (await tx.session.execute(select(UsageDailyRollup))).scalars()
        return {(r.day, r.user_id, r.provider, r.model): tuple(getattr(r, m) for m in MEASURES) for r in rows}
    finally:
        await tx.close()


def model_rows_of(events: list[UsageEvent], day: dt.date, provider: str) -> int:
    return len({e.model for e in events if e.created_at.astimezone(dt.UTC).date() == day and e.provider == provider})


async def model_rollup_rows(rt: Runtime) -> dict[tuple[Any, ...], tuple[int, ...]]:
    tx = rt.tx()
    try:
        rows = (await tx.session.execute(select(UsageDailyModelRollup))).scalars()
        return {(r.day, r.provider, r.model): tuple(getattr(r, m) for m in MEASURES) for r in rows}
    finally:
        await tx.close()


def expected_model_rows(events: list[UsageEvent], before: dt.date) -> dict[tuple[Any, ...], tuple[int, ...]]:
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for (day, _, provider, model), values in expected_rows(events, before).items():
        for i, value in enumerate(values):
            sums[(day, provider, model)][i] += value
    return {k: tuple(v) for k, v in sums.items()}


def expected_rows(events: list[UsageEvent], before: dt.date) -> dict[tuple[Any, ...], tuple[int, ...]]:
    sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in events:
        day = e.created_at.astimezone(dt.UTC).date()
        if day < before:
            bucket = sums[(day, e.user_id, e.provider, e.model)]
            for i, value in enumerate((1, e.input_tokens, e.output_tokens, e.credits)):
                bucket[i] += value
    return {k: tuple(v) for k, v in sums.items()}


async def test_rollup_backed_figures_equal_raw_figures(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    rng = random.Random(5)
    others = [await create_user(runtime) for _ in range(2)]
    for caller in (user, *others):
        await report_events(client, runtime, caller, 25, rng)
    await spread(runtime, rng, keep_today=6)
    events = await all_events(runtime)

    for start, end in windows(utcnow()):
        body = (await client.get("/api/analytics/overview", headers=admin.headers, params=_params(start, end))).json()
        raw = raw_overview(events, start, end)
        assert comparable(body) == raw
    before = await snapshot(client, admin, user)

    run = await rollup(runtime)
    first_day = events[0].created_at.date()
    assert run.complete_until is not None and run.days == (run.complete_until - first_day).days
    rows = await rollup_rows(runtime)
    assert rows == expected_rows(events, run.complete_until)
    assert await model_rollup_rows(runtime) == expected_model_rows(events, run.complete_until)
    assert 0 < len(rows) < len(events)  # several events share a day x user x model
    assert await snapshot(client, admin, user) == before
    for start, end in windows(utcnow()):
        body = (await client.get("/api/analytics/overview", headers=admin.headers, params=_params(start, end))).json()
        raw = raw_overview(events, start, end)
        assert comparable(body) == raw

    # The figures really come from the rollups: changed rollup rows show, the per-user table
    # in a user's figures, the all-users one in the overview's totals.
    day, user_id, provider, model = next(iter(rows))
    tx = runtime.tx()
    await tx.session.execute(
        update(UsageDailyRollup)
        .where(
            UsageDailyRollup.day == day,
            UsageDailyRollup.user_id == user_id,
            UsageDailyRollup.provider == provider,
            UsageDailyRollup.model == model,
        )
        .values(credits=UsageDailyRollup.credits + 1000)
    )
    await tx.session.execute(
        update(UsageDailyModelRollup)
        .where(UsageDailyModelRollup.day == day, UsageDailyModelRollup.provider == provider)
        .values(credits=UsageDailyModelRollup.credits + 7)
    )
    await tx.commit()
    await tx.close()
    raw = raw_overview(events, None, None)
    body = (await client.get("/api/analytics/overview", headers=admin.headers)).json()
    assert body["totals"]["credits"] == raw["totals"]["credits"] + 7 * model_rows_of(events, day, provider)
    assert body["topUsers"] and {u["userId"]: u["credits"] for u in body["topUsers"]}[str(user_id)] == (
        raw["topUsers"][str(user_id)]["credits"] + 1000
    )

    # Re-running recomputes the recent days (idempotent upsert) and repairs the row; a late
    # event (committed after its day was rolled up) is caught by the lookback.
    await report_events(client, runtime, user, 1, rng)
    late = (await all_events(runtime))[-1]
    yesterday = utcnow() - dt.timedelta(days=1)
    await place(runtime, [late.id], [yesterday])
    again = await rollup(runtime, lookback_days=30)
    assert again.complete_until is not None
    events = await all_events(runtime)
    assert await rollup_rows(runtime) == expected_rows(events, again.complete_until)
    assert await model_rollup_rows(runtime) == expected_model_rows(events, again.complete_until)
    for start, end in windows(utcnow()):
        body = (await client.get("/api/analytics/overview", headers=admin.headers, params=_params(start, end))).json()
        raw = raw_overview(events, start, end)
        assert comparable(body) == raw


async def test_rollup_on_an_empty_table_then_first_events(runtime: Runtime) -> None:
    run = await rollup(runtime)
    assert run.days == 0
    tx = runtime.tx()
    try:
        assert await rollups.complete_until(tx.session) == run.complete_until
    finally:
        await tx.close()
    assert await rollup_rows(runtime) == {}


async def test_concurrent_rollups_on_several_instances_agree(pg_runtime: Runtime) -> None:
    rt = pg_runtime
    transport = httpx.ASGITransport(app=_core_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
        rng = random.Random(9)
        for _ in range(3):
            await report_events(client, rt, await create_user(rt), 15, rng)
    await spread(rt, rng, keep_today=3)
    instances = [Runtime.build(rt.settings) for _ in range(4)]
    try:
        runs = await asyncio.gather(*(rollup(instance) for instance in instances))
    finally:
        for instance in instances:
            await instance.close()
    assert {r.complete_until for r in runs} == {runs[0].complete_until}
    assert runs[0].complete_until is not None
    events = await all_events(rt)
    assert await rollup_rows(rt) == expected_rows(events, runs[0].complete_until)
    assert await model_rollup_rows(rt) == expected_model_rows(events, runs[0].complete_until)


MOMENT = st.datetimes(min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2026, 3, 1), timezones=st.just(dt.UTC))


@given(
    start=st.none() | MOMENT,
    end=st.none() | MOMENT,
    mark=st.none() | st.dates(min_value=dt.date(2025, 12, 25), max_value=dt.date(2026, 3, 5)),
)
def test_split_covers_the_window_once(start: dt.datetime | None, end: dt.datetime | None, mark: dt.date | None) -> None:
    """Rollup days and raw ranges tile [start, end) exactly, and rollup days all precede the mark."""
    if start is not None and end is not None and end <= start:
        return
    window = rollups.split(start, end, mark)
    lo_inf, hi_inf = dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    pieces = [(a or lo_inf, b or hi_inf) for a, b in window.raw]
    if window.days is not None:
        first, last = window.days
        assert mark is not None and last <= mark
        first_at = lo_inf if first is None else dt.datetime(first.year, first.month, first.day, tzinfo=dt.UTC)
        pieces.append((first_at, dt.datetime(last.year, last.month, last.day, tzinfo=dt.UTC)))
    pieces.sort()
    assert all(a < b for a, b in pieces)
    assert pieces[0][0] == (start or lo_inf) and pieces[-1][1] == (end or hi_inf)
    assert all(pieces[i][1] == pieces[i + 1][0] for i in range(len(pieces) - 1))
