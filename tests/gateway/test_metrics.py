"""The metrics tally (gateway/metrics.py) against the prometheus_client it writes into.

The tally adds whole batches to a histogram child's private ``_buckets`` and ``_sum`` (the
library has no public batch call). These tests are the guard on those internals: the first
fails on any prometheus_client version nobody has checked them against, the others prove a
flush exposes exactly what observing each request through the public API does.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aihub.gateway import metrics
from aihub.gateway.metrics import _Tally

# prometheus_client versions whose Histogram keeps ``_upper_bounds``, and whose children keep
# ``_buckets`` (one value with ``inc`` per bound) and ``_sum``, as ``Histogram.observe`` uses
# them. Add a version only after reading its ``Histogram.observe`` and ``_child_samples``.
VERIFIED = ("0.20.", "0.21.", "0.22.", "0.23.", "0.24.", "0.25.", "0.26.")


def test_the_installed_prometheus_client_is_one_the_tally_was_verified_against() -> None:
    installed = version("prometheus_client")
    assert installed.startswith(VERIFIED), (
        f"prometheus_client {installed}: gateway/metrics.py _Tally.flush writes Histogram internals "
        "(_upper_bounds, a child's _buckets and _sum); check them in this version, then add it to VERIFIED"
    )


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Counter]:
    requests = Counter("t_requests_total", "r", ["route", "method", "status"], registry=registry)
    latency = Histogram("t_latency_seconds", "l", ["route", "status"], buckets=metrics.BUCKETS, registry=registry)
    decisions = Counter("t_decisions_total", "d", ["decision"], registry=registry)
    return requests, latency, decisions


# Durations on, between and around the bucket bounds (0.0005 and 0.001 are bounds themselves).
DURATIONS = [0.0, 0.0001, 0.0005, 0.0007, 0.001, 0.004, 0.02, 0.3, 2.0, 29.0, 31.0, 120.0]


@pytest.mark.parametrize("flushes", [1, 3])
def test_a_flush_exposes_what_observing_each_request_does(flushes: int) -> None:
    batched, direct = CollectorRegistry(), CollectorRegistry()
    tally = _Tally(*_metrics(batched))
    requests, latency, decisions = _metrics(direct)
    for turn in range(flushes):
        for i, seconds in enumerate(DURATIONS):
            route, status = ("/api/users", 200) if i % 3 else ("/api/auth", 429)
            tally.observe(route, "GET", status, seconds)
            tally.decide("allowed" if status == 200 else "limited")
            requests.labels(route, "GET", str(status)).inc()
            latency.labels(route, str(status)).observe(seconds)
            decisions.labels("allowed" if status == 200 else "limited").inc()
        tally.flush()
        expected = _exposed(direct)
        # Counts exactly; a sum up to float rounding (a batch is summed before it is added).
        assert _exposed(batched) == pytest.approx(expected, rel=1e-12, abs=0), f"after flush {turn + 1}"


def _exposed(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample but the ``_created`` timestamps, which differ between two registries."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_the_gateway_tally_uses_the_gateway_histogram_bounds() -> None:
    assert metrics.TALLY.bounds == list(metrics.LATENCY._upper_bounds)
    assert metrics.TALLY.bounds[-1] == float("inf")
