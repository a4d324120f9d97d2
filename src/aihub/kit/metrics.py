"""Prometheus metrics shared by the HTTP services (one registry per process)."""

from __future__ import annotations

import ipaddress
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

from aihub.config import Settings
from aihub.kit.errors import error_response

HTTP_REQUESTS = Counter(
    "aihub_http_requests_total",
    "HTTP requests answered, by service, method, route template and status",
    ["service", "method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "aihub_http_request_duration_seconds",
    "Time from the first byte of a request to the end of its response",
    ["service", "method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def scrape() -> bytes:
    """The exposition text: this process's registry, or, under several workers (``aihub serve
    --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR``), the sum over every worker of the service."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def client_allowed(host: str | None, settings: Settings) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in settings.metrics_networks)


async def metrics_endpoint(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    host = request.client.host if request.client else None
    if not client_allowed(host, settings):
        return error_response(403, "FORBIDDEN", "Metrics are not available from this address", request.state.request_id)
    return Response(scrape(), media_type=CONTENT_TYPE_LATEST)
