"""Gateway metrics (the process-wide Prometheus registry, served at /metrics)."""

from __future__ import annotations

import asyncio
import bisect

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "aihub_gateway_requests_total",
    "Requests answered by the gateway, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "aihub_gateway_request_duration_seconds",
    "Time from request to the end of the response, by route and status",
    ["route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
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

DECISIONS = {name: RATE_LIMIT.labels(name) for name in ("allowed", "limited", "revoked", "unavailable")}
_BOUNDS = LATENCY._upper_bounds  # the buckets above, with +Inf last


class _Tally:
    """Per-request counts in plain Python, moved into the Prometheus children by ``flush``.

    ``Counter.inc`` and ``Histogram.observe`` take a lock and walk the buckets in Python on
    every call (~3 us per request for the two, measured with py-spy under wrk); here a request
    costs a dict lookup, a C bisect and two list increments, and the locked work happens once
    per flush (every second, and before every scrape) per label set."""

    __slots__ = ("latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # (route, status) -> [count per bucket..., sum of seconds]
        self.latency: dict[tuple[str, int], list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        row = self.latency.get((route, status))
        if row is None:
            row = self.latency[(route, status)] = [0.0] * (len(_BOUNDS) + 1)
        row[bisect.bisect_left(_BOUNDS, seconds)] += 1
        row[-1] += seconds

    def flush(self) -> None:
        requests, latency = self.requests, self.latency
        if not requests and not latency:
            return
        self.requests, self.latency = {}, {}
        for (route, method, status), count in requests.items():
            REQUESTS.labels(route, method, str(status)).inc(count)
        for (route, status), row in latency.items():
            child = LATENCY.labels(route, str(status))
            # The child's bucket and sum values (prometheus_client keeps them as ``_buckets``
            # and ``_sum``): adding a batch there is what ``observe`` does one at a time.
            for index, in_bucket in enumerate(row[:-1]):
                if in_bucket:
                    child._buckets[index].inc(in_bucket)
            child._sum.inc(row[-1])


TALLY = _Tally()
observe = TALLY.observe
flush = TALLY.flush


async def flush_forever(interval: float = 1.0) -> None:
    """Keeps the registry (and, under several workers, the shared files) at most ``interval``
    behind; ``/metrics`` flushes its own process's tally before rendering."""
    while True:
        await asyncio.sleep(interval)
        flush()
