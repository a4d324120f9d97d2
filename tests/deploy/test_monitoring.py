"""Alert rules and the Grafana dashboard: valid PromQL, unit-tested alerts, real metric names.

``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it) checks the rules and
runs their unit tests (deploy/prometheus/alerts_test.yml). The dashboard's queries are checked
by the same parser. Then the gateway, auth and core run in this process on PostgreSQL and
Redis, serve a few requests (a 2xx, a 401, a 402, a 404), and every metric and label that the
alerts and the dashboard name must be in what their /metrics endpoints answer.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aihub.config import Settings
from aihub.core.credits.reconcile import reconcile
from aihub.core.notifications.jobs import deliver_webhook
from aihub.gateway.app import create_app as create_gateway
from tests.conftest import Caller, LiveServer, create_user, free_port
from tests.deploy.files import DEPLOY, require_tool

PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "aihub.json"
# Labels that Prometheus adds to every scraped series (and the renamed clash: see prometheus.yml).
TARGET_LABELS = {"job", "instance"}


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "apt-get install prometheus; .ci/run does")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _dashboard_panels() for target in panel["targets"]]


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in done.stdout


def test_promtool_test_rules() -> None:
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_check_config_of_the_bundled_prometheus() -> None:
    done = _promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_fails_on_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: with the 5xx threshold moved, the firing case no longer fires."""
    rules = (PROMETHEUS / "alerts.yml").read_text()
    assert ") > 0.05" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(") > 0.05", ") > 0.5"))
    (tmp_path / "alerts_test.yml").write_text((PROMETHEUS / "alerts_test.yml").read_text())
    done = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0
    assert "GatewayHigh5xxRate" in done.stdout + done.stderr


def test_every_alert_fires_in_a_unit_test_and_stays_silent_in_another() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    required = {
        "GatewayHigh5xxRate",
        "GatewayHighP99Latency",
        "GatewayUpstreamInstanceDown",
        "GatewayUpstreamGroupDown",
        "GatewayRedisFallbackActive",
        "LedgerReconcileMismatch",
    }
    assert required <= names
    assert fired == names and silent == names
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_runbook_links_lead_to_a_section_of_the_operations_guide() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in guide.splitlines()
        if line.startswith("#")
    }
    for rule in _alert_rules():
        page, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/operations.md" and anchor in headings, rule["alert"]


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Every panel query, as a recording rule, through promtool's parser (Grafana's macros filled)."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m").replace("$__range", "6h")}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in _dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
    text = " ".join(_dashboard_exprs())
    for metric in (
        "aihub_gateway_requests_total",
        "aihub_gateway_request_duration_seconds_bucket",
        "aihub_gateway_upstream_healthy",
        "aihub_gateway_rate_limit_decisions_total",
        "aihub_gateway_redis_fallback",
        "aihub_ledger_reconcile_mismatches",
    ):
        assert metric in text, metric
    assert 'status="402"' in text
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text


# ------------------------------------------------------------------ names the services export

_SELECTOR = re.compile(r"\b(aihub_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _used(exprs: list[str]) -> list[tuple[str, set[str], set[str]]]:
    """(expression, metric names, label names it matches or groups by) for each expression."""
    result = []
    for expr in exprs:
        metrics: set[str] = set()
        labels: set[str] = set()
        for name, body in _SELECTOR.findall(expr):
            metrics.add(name)
            labels |= set(_MATCHER.findall(body or ""))
        for group in _GROUPING.findall(expr):
            labels |= {label.strip() for label in group.split(",") if label.strip()}
        result.append((expr, metrics, labels))
    return result


def _exposed(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a /metrics answer (families without samples: no labels)."""
    found: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, [""]):
            found.setdefault(family.name + suffix, set())
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def _has_sample(text: str, name: str, **labels: str) -> bool:
    return any(
        sample.name == name and labels.items() <= sample.labels.items()
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


@pytest.fixture
async def gateway_url(live_core: LiveServer, live_auth: LiveServer) -> AsyncIterator[str]:
    rt = live_core.runtime
    settings = Settings(
        env="test",
        core_url=live_core.url,
        auth_url=live_auth.url,
        mcp_url=f"http://127.0.0.1:{free_port()}",
        gateway_access_log=False,
    )
    app = create_gateway(settings, store=rt.store, codec=rt.codec)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _traffic(gw: str, live_core: LiveServer) -> None:
    rt = live_core.runtime
    service: Caller = await create_user(rt, roles=["admin"])
    async with httpx.AsyncClient(base_url=gw, timeout=10) as client:
        account = {"email": f"m-{uuid.uuid4().hex[:8]}@example.com", "password": "long-enough-1"}
        assert (await client.post("/api/auth/register", json=account)).status_code == 201
        login = await client.post("/api/auth/login", json=account)
        user = {"Authorization": f"Bearer {login.json()['accessToken']}"}
        me = await client.get("/api/users/me", headers=user)
        assert me.status_code == 200
        assert (await client.get("/api/users/me")).status_code == 401
        assert (await client.get("/api/nowhere")).status_code == 404
        debit = {"userId": me.json()["id"], "amount": 5}
        refused = await client.post("/api/credits/deduct", json=debit, headers=service.headers)
        assert refused.status_code == 402, refused.text
    tx = rt.tx()
    try:
        await reconcile(tx)  # what the worker's periodic job does: sets the reconcile gauges
    finally:
        await tx.close()
    await _one_webhook()


async def _one_webhook() -> None:
    """The worker's low-balance webhook job, delivering to a local receiver (counts its outcome)."""

    async def accept(_: web.Request) -> web.Response:
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", accept)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = Settings(env="test", low_balance_webhook_url=f"http://127.0.0.1:{port}/hook")
        await deliver_webhook(SimpleNamespace(settings=settings), {"type": "credits.low_balance"})  # type: ignore[arg-type]
    finally:
        await runner.cleanup()


async def test_alerts_and_dashboard_name_only_exported_metrics(gateway_url: str, live_core: LiveServer) -> None:
    await _traffic(gateway_url, live_core)
    async with httpx.AsyncClient(timeout=10) as client:
        gateway = (await client.get(gateway_url + "/metrics")).text
        core = (await client.get(live_core.url + "/metrics")).text
    exposed = _exposed(gateway)
    for name, labels in _exposed(core).items():
        exposed.setdefault(name, set()).update(labels)
    # Sanity: the traffic above shows up under the names and labels the rules use.
    assert _has_sample(gateway, "aihub_gateway_requests_total", route="/api/users", status="401")
    assert _has_sample(core, "aihub_http_requests_total", service="core", route="/api/credits/deduct", status="402")
    assert _has_sample(core, "aihub_ledger_reconcile_mismatches")
    assert _has_sample(core, "aihub_credit_low_balance_webhooks_total", outcome="delivered")

    exprs = [rule["expr"] for rule in _alert_rules()] + _dashboard_exprs()
    for expr, metrics, labels in _used(exprs):
        assert metrics or "up{" in expr, expr
        missing = metrics - set(exposed)
        assert not missing, f"not exported: {missing} in {expr}"
        known = set().union(*(exposed[m] for m in metrics)) if metrics else set()
        known |= TARGET_LABELS | {f"exported_{label}" for label in known & TARGET_LABELS}
        if any(m.endswith("_bucket") for m in metrics):
            known.add("le")
        unknown = labels - known
        assert not unknown, f"labels {unknown} not on {metrics}: {expr}"


def test_a_wrong_name_would_be_caught() -> None:
    exposed = _exposed('# HELP aihub_x_total x\n# TYPE aihub_x_total counter\naihub_x_total{a="1"} 1.0\n')
    assert "aihub_x_total" in exposed and exposed["aihub_x_total"] == {"a"}
    ((_, metrics, labels),) = _used(['sum by (b) (rate(aihub_y_total{a="1"}[5m]))'])
    assert metrics == {"aihub_y_total"} and labels == {"a", "b"}
    assert metrics - set(exposed)  # aihub_y_total is not exported: the real test would fail
