"""Gateway metrics (the process-wide Prometheus registry, served at /metrics)."""

from __future__ import annotations

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

# Children resolved once: ``labels()`` costs a lock and a dict lookup on every request.
_requests: dict[tuple[str, str, str], Counter] = {}
_latency: dict[tuple[str, str], Histogram] = {}
DECISIONS = {name: RATE_LIMIT.labels(name) for name in ("allowed", "limited", "revoked", "unavailable")}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    code = str(status)
    counter = _requests.get((route, method, code))
    if counter is None:
        counter = _requests[(route, method, code)] = REQUESTS.labels(route, method, code)
    counter.inc()
    hist = _latency.get((route, code))
    if hist is None:
        hist = _latency[(route, code)] = LATENCY.labels(route, code)
    hist.observe(seconds)
