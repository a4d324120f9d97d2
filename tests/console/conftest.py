"""Fixtures of the console's end-to-end tests: one running aihub and one headless chromium per
module, a fresh browser context (no shared state) per test. Playwright's sync API runs its own
event loop on this thread, so it is closed before the modules with asyncio tests run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.console.system import CHROMIUM_ARGS, Api, System, chromium_path


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    running = System(
        tmp_path_factory.mktemp("console"),
        # The tests sign in a dozen times a minute from one address; the limits themselves are
        # tested in tests/gateway.
        env_extra={"AIHUB_RATE_LIMIT_LOGIN": "1000", "AIHUB_RATE_LIMIT_REGISTER": "1000", "AIHUB_RATE_LIMIT_USER": "0"},
    )
    running.start()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, "".join(running.stderr_lines[-40:])


@pytest.fixture(scope="module")
def api(system: System) -> Iterator[Api]:
    client = Api(system.base_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def admin(api: Api, system: System) -> dict[str, str]:
    return api.login(system.admin_email, system.admin_password)


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the dev extras install it
        _unavailable(f"playwright is not installed: {exc}")
    executable = chromium_path()
    if executable is None:
        _unavailable("chromium is not installed (apt-get install chromium; .ci/run does it)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page plus what its browser console said: CSP violations and script errors fail a test."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"script error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.problems.append(f"CSP: {text}")
        elif message.type == "error" and "Failed to load resource" not in text:
            # Failed loads are the API's 4xx answers, which the pages show on purpose.
            self.problems.append(f"console error: {text}")


@pytest.fixture
def watched(browser: Any, system: System) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    watch = Watched(page)
    yield watch
    context.close()
    assert not watch.problems, watch.problems


@pytest.fixture
def page(watched: Watched) -> Any:
    return watched.page
