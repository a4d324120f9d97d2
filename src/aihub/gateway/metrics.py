"""Gateway metrics (the process-wide Prometheus registry, served at /metrics)."""

from __future__ import annotations

import asyncio
import bisect

from prometheus_client import Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUESTS = Counter(
    "aihub_gateway_requests_total",
    "Requests answered by the gateway, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "aihub_gateway_request_duration_seconds",
    "Time from request to the end of the response, by route and status",
    ["route", "status"],
    buckets=BUCKETS,
)
UPSTREAM_HEALTHY = Gauge(
    "aihub_gateway_upstream_healthy",
    "1 when an upstream instance takes traffic, 0 when it is ejected or failing health checks",
    ["group", "instance"],
)
RATE_LIMIT = Counter(
    "aihub_gateway_rate_limit_decisions_total",
    "Rate-limit and blacklist decisions: allowed, limited, revoked, unavailable",
    ["decision"],
)
REDIS_FALLBACK = Gauge(
    "aihub_gateway_redis_fallback",
    "1 while Redis is unreachable and limits are per process",
)
BLOCKED = Counter("aihub_gateway_blocked_total", "Requests refused because the client address is blocked")
# Every decision's series exists from the start (at 0), before the tally has counted one.
DECISIONS = {name: RATE_LIMIT.labels(name) for name in ("allowed", "limited", "revoked", "unavailable")}


class _Tally:
    """Per-request counts in plain Python, moved into the Prometheus children by ``flush``.

    ``Counter.inc`` and ``Histogram.observe`` take a lock and walk the buckets in Python on
    every call (~3 us per request for the two, measured with py-spy under wrk); here a request
    costs a dict lookup, a C bisect and two list increments, and the locked work happens once
    per flush (every second, and before every scrape) per label set.

    prometheus_client has no public call that adds a batch of observations to a histogram, so
    ``flush`` adds to what ``Histogram.observe`` itself adds to: the parent's ``_upper_bounds``,
    a child's ``_buckets`` (one value per bound) and ``_sum``. These names are private: the
    versions they were verified against are listed in tests/gateway/test_metrics.py, which
    fails on any other version and checks that a flush exposes exactly what observing one
    request at a time does."""

    __slots__ = (
        "bounds",
        "decisions",
        "decisions_counter",
        "latency",
        "latency_histogram",
        "requests",
        "requests_counter",
    )

    def __init__(self, requests: Counter, latency: Histogram, decisions: Counter) -> None:
        self.requests_counter, self.latency_histogram, self.decisions_counter = requests, latency, decisions
        self.bounds: list[float] = list(latency._upper_bounds)  # +Inf last, the list observe walks
        self.requests: dict[tuple[str, str, int], int] = {}
        # (route, status) -> [count per bucket..., sum of seconds]
        self.latency: dict[tuple[str, int], list[float]] = {}
        self.decisions: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        row = self.latency.get((route, status))
        if row is None:
            row = self.latency[(route, status)] = [0.0] * (len(self.bounds) + 1)
        row[bisect.bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds, as observe
        row[-1] += seconds

    def decide(self, decision: str) -> None:
        """A rate-limit decision: allowed, limited, revoked or unavailable."""
        self.decisions[decision] = self.decisions.get(decision, 0) + 1

    def flush(self) -> None:
        requests, latency, decisions = self.requests, self.latency, self.decisions
        if not requests and not latency and not decisions:
            return
        self.requests, self.latency, self.decisions = {}, {}, {}
        for (route, method, status), count in requests.items():
            self.requests_counter.labels(route, method, str(status)).inc(count)
        for decision, count in decisions.items():
            self.decisions_counter.labels(decision).inc(count)
        for (route, status), row in latency.items():
            child = self.latency_histogram.labels(route, str(status))
            for index, in_bucket in enumerate(row[:-1]):
                if in_bucket:
                    child._buckets[index].inc(in_bucket)
            child._sum.inc(row[-1])


TALLY = _Tally(REQUESTS, LATENCY, RATE_LIMIT)
observe = TALLY.observe
decide = TALLY.decide
flush = TALLY.flush


async def flush_forever(interval: float = 1.0) -> None:
    """Keeps the registry (and, under several workers, the shared files) at most ``interval``
    behind; ``/metrics`` flushes its own process's tally before rendering."""
    while True:
        await asyncio.sleep(interval)
        flush()
