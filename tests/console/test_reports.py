"""Long reports in the console: the API answers 202 with a job, the page shows its progress,
then draws (analytics) or downloads (billing CSV) the result."""

from __future__ import annotations

import csv
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.console.system import MODELS, Api, System, new_email, sign_in

pytestmark = pytest.mark.e2e
PASSWORD = "reports-password-1"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Its own aihub where any report longer than about 9 s of data is a background job."""
    running = System(
        tmp_path_factory.mktemp("reports"),
        env_extra={"AIHUB_REPORT_SYNC_MAX_DAYS": "0.0001", "AIHUB_RATE_LIMIT_LOGIN": "1000"},
    )
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(running.stderr_lines[-40:])


def _job_result(api: Api, headers: dict[str, str], path: str, **params: Any) -> Any:
    """The same report through the API: a job, polled until it is done, then downloaded."""
    job = api.get(path, headers, **params)
    assert job.status_code == 202, job.text
    body = job.json()
    for _ in range(200):
        if body["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
        body = api.get(body["url"], headers).json()
    assert body["status"] == "succeeded", body
    return api.get(body["downloadUrl"], headers)


def test_analytics_over_a_long_period_follows_the_job_then_draws(
    page: Any, system: System, api: Api, admin: dict[str, str]
) -> None:
    for tag, count in (("a", 2), ("b", 3)):
        user_id = api.register(new_email(tag), PASSWORD)
        api.grant(admin, user_id, 10_000)
        for provider, model in MODELS[:count]:
            api.usage(admin, user_id, provider, model, tokens=1_500)
    sign_in(page, system, system.admin_email, system.admin_password)
    with page.expect_response("**/api/analytics/overview**") as first:
        page.get_by_role("link", name="Analytics").click()
    assert first.value.status == 202
    expect(page.get_by_role("status").filter(has_text="Computing the overview")).to_be_visible()
    expect(page.get_by_role("img", name="Credits spent per day")).to_be_visible()
    drawn = page.get_by_role("img", name="Credits spent per day").locator("rect.bar")
    values = drawn.evaluate_all("els => els.map(e => Number(e.dataset.value))")
    period = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(first.value.url).query))  # what the page asked
    expected = _job_result(api, admin, "/api/analytics/overview", **period).json()
    assert sum(values) == expected["totals"]["credits"] > 0
    active = page.get_by_role("img", name="Active users per day").locator("circle")
    assert active.evaluate_all("els => els.map(e => Number(e.dataset.value))") == [
        d["activeUsers"] for d in expected["daily"] if d["activeUsers"]
    ]
    assert expected["activeUsers"] == 2


def test_own_billing_csv_that_runs_as_a_job_is_downloaded(
    page: Any, system: System, api: Api, admin: dict[str, str]
) -> None:
    email = new_email("billed")
    user_id = api.register(email, PASSWORD)
    api.grant(admin, user_id, 2_000)
    spent = api.usage(admin, user_id, *MODELS[0], tokens=2_000)
    sign_in(page, system, email, PASSWORD)
    page.get_by_role("link", name="Billing").click()
    report = page.get_by_role("form", name="Billing report")
    report.get_by_label("Format").select_option("csv")
    with page.expect_download() as info:
        report.get_by_role("button", name="Get report").click()
    expect(page.get_by_role("status").filter(has_text="Report ready")).to_be_visible()
    with open(info.value.path(), newline="", encoding="utf-8") as handle:
        text = handle.read()
    rows = [row[:3] for row in csv.reader(text.splitlines())]
    assert ["reason", "adjustment", "2000"] in rows
    assert ["summary", "closing_balance", str(2_000 - spent)] in rows
