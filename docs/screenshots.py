"""Screenshots of the web console's main pages, into docs/img/ (the README shows the dashboard).

    .venv/bin/python docs/screenshots.py            # needs the dev extras and Debian's chromium

It starts the README's embedded system in a temporary folder, fills it through the public API
(users, credits, usage on several models, promo codes), signs in through the console's form as
a person would and photographs each page.

The API stamps every row with the time it receives it, so a fresh system has usage on one day
only. To picture a fortnight, the script then moves its own demo usage events back in time in
the throw-away SQLite file (day N's events by N days), which is what the usage charts read. The
ledger and the audit log keep their real times: the ledger is append-only (a trigger refuses
any change) and the audit rows are hash-chained. A picture-making step, nothing the product does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.console.system import CHROMIUM_ARGS, MODELS, Api, System, chromium_path, sign_in  # noqa: E402

PASSWORD = "demo-password-1"  # noqa: S105 - a throw-away demo account
PEOPLE = ("alice@example.com", "bob@example.com", "carol@example.com", "dan@example.com")
EXTRA_MODELS = (("google", "gemini-2.5-pro"),)
DAYS = 14


def _models(api: Api) -> list[tuple[str, str]]:
    """The seeded models, plus any extra one that has a price here."""
    priced = {(p["provider"], p["model"]) for p in api.http.get("/api/pricing").json()["items"]}
    return [m for m in (*MODELS, *EXTRA_MODELS) if m in priced]


def backdate(database: Path) -> None:
    """Move day N's demo usage events (request ids ``demo-dNN-…``) N days back (see the docstring)."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, request_id, created_at FROM usage_events WHERE request_id LIKE 'demo-d%'")
        for event_id, request_id, created in rows.fetchall():
            moved = dt.datetime.strptime(created, fmt) - dt.timedelta(days=int(request_id[6:8]))
            db.execute("UPDATE usage_events SET created_at = ? WHERE id = ?", (moved.strftime(fmt), event_id))


def seed(system: System) -> dict[str, str]:
    api = Api(system.base_url)
    rng = random.Random(20)  # the same pictures every run
    admin = api.login(system.admin_email, system.admin_password)
    ids = {email: api.register(email, PASSWORD) for email in PEOPLE}
    for user_id in ids.values():
        api.grant(admin, user_id, rng.choice((50_000, 80_000, 120_000)))
    models = _models(api)
    for days_back in range(DAYS - 1, -1, -1):  # oldest first: rows are written in time order
        for email, user_id in ids.items():
            weight = 1 + PEOPLE.index(email)
            for provider, model in models:
                for _ in range(rng.randint(0, weight + (DAYS - days_back) // 4)):
                    request_id = f"demo-d{days_back:02d}-{uuid.uuid4()}"
                    api.usage(admin, user_id, provider, model, tokens=rng.randint(300, 2_500), request_id=request_id)
    backdate(system.folder / "aihub.db")
    batch = api.http.post(
        "/api/promo-codes/batch",
        headers=admin,
        json={"count": 6, "prefix": "SPRING", "credits": 500, "maxRedemptions": 50, "description": "spring campaign"},
    )
    batch.raise_for_status()
    api.http.post("/api/promo-codes", headers=admin, json={"code": "WELCOME", "credits": 1_000}).raise_for_status()
    for email in PEOPLE[:3]:
        user = api.login(email, PASSWORD)
        api.http.post("/api/promo-codes/redeem", headers=user, json={"code": "WELCOME"}).raise_for_status()
    api.http.post(
        "/api/gateway/blocked-ips", headers=admin, json={"ip": "203.0.113.0/24", "reason": "credential stuffing"}
    ).raise_for_status()
    alice = api.login(PEOPLE[0], PASSWORD)
    api.http.post("/api/sora/sessions", headers=alice).raise_for_status()
    api.close()
    return ids


def shoot(system: System, out: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    if executable is None:
        sys.exit("chromium is not installed: apt-get install chromium")
    made: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)

        def page_at(width: int, height: int) -> Any:
            context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
            context.set_default_timeout(20_000)
            return context.new_page()

        def snap(page: Any, name: str, full: bool = True) -> None:
            page.wait_for_load_state("networkidle")
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=full)
            made.append(path)

        page = page_at(1280, 860)
        page.goto(system.console_url)
        page.get_by_label("Email").fill(PEOPLE[0])
        snap(page, "console-sign-in", full=False)
        sign_in(page, system, PEOPLE[0], PASSWORD)
        expect(page.get_by_role("img", name="Usage per day by model (credits), last 30 days")).to_be_visible()
        snap(page, "console-dashboard")
        page.get_by_role("link", name="Transactions").click()
        expect(page.get_by_role("table")).to_be_visible()
        snap(page, "console-transactions")
        page.context.close()

        page = page_at(1280, 860)
        sign_in(page, system, system.admin_email, system.admin_password)
        page.get_by_role("link", name="Users", exact=True).click()
        page.get_by_role("button", name=f"View {PEOPLE[1]}").click()
        expect(page.locator("[data-figure=user-balance]")).to_be_visible()
        snap(page, "console-users")
        page.get_by_role("link", name="Promo codes").click()
        page.get_by_role("button", name="Redemptions of WELCOME").click()
        expect(page.get_by_role("heading", name="Redemptions of WELCOME")).to_be_visible()
        snap(page, "console-promo-codes")
        page.get_by_role("link", name="Analytics").click()
        expect(page.get_by_role("img", name="Credits spent per day")).to_be_visible()
        snap(page, "console-analytics")
        page.get_by_role("link", name="Audit log").click()
        page.get_by_role("button", name="Verify chain").click()
        expect(page.get_by_text("The chain is intact")).to_be_visible()
        snap(page, "console-audit-log", full=False)
        page.context.close()

        page = page_at(390, 844)
        sign_in(page, system, PEOPLE[0], PASSWORD)
        expect(page.get_by_role("img", name="Usage per day by model (credits), last 30 days")).to_be_visible()
        snap(page, "console-phone")
        browser.close()
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aihub-shots-") as tmp:
        folder = Path(tmp)
        # Rollups off: the backdated rows are read raw (a rollup would have to be recomputed).
        env = {
            "AIHUB_RATE_LIMIT_LOGIN": "1000",
            "AIHUB_RATE_LIMIT_USER": "0",
            "AIHUB_USAGE_ROLLUP_INTERVAL_SECONDS": "0",
        }
        system = System(folder, env_extra=env)
        system.start()
        try:
            seed(system)
            for path in shoot(system, args.out):
                print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        finally:
            system.stop()


if __name__ == "__main__":
    main()
