"""How the gateway serves the console: its CSP, caching, and what it refuses; and that the
console's code keeps to its security stance (no inline script, no stored tokens, no innerHTML)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.console.system import ROOT, System

pytestmark = pytest.mark.e2e
STATIC = ROOT / "src" / "aihub" / "console" / "static"


def _files() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*") if p.is_file())


def test_every_console_file_is_served_with_the_strict_csp(system: System) -> None:
    with httpx.Client(base_url=system.base_url) as http:
        for path in _files():
            rel = path.relative_to(STATIC).as_posix()
            response = http.get(f"/console/{rel}")
            assert response.status_code == 200, rel
            assert response.content == path.read_bytes()
            csp = response.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
            assert directives["frame-ancestors"] == "'none'" and directives["connect-src"] == "'self'"
            assert "unsafe" not in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-cache"
        page = http.get("/console/")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.text == (STATIC / "index.html").read_text()
        again = http.get("/console/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert http.get("/console/js/app.js").headers["content-type"] == "text/javascript; charset=utf-8"


def test_what_the_console_route_refuses(system: System) -> None:
    with httpx.Client(base_url=system.base_url) as http:
        bare = http.get("/console")
        assert bare.status_code == 308 and bare.headers["location"] == "/console/"
        root = http.get("/")
        assert root.status_code == 308 and root.headers["location"] == "/console/"
        for missing in ("/console/nope.js", "/console/../pyproject.toml", "/console/js/../../aihub.db"):
            answer = http.get(missing)
            assert answer.status_code == 404, missing
            assert answer.json()["code"] == "NOT_FOUND"
        posted = http.post("/console/", content=b"x")
        assert posted.status_code == 405 and posted.json()["code"] == "METHOD_NOT_ALLOWED"


def test_the_console_code_keeps_its_security_stance() -> None:
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, flags=re.S)
    assert scripts and all(body.strip() == "" for body in scripts)  # only <script src=…>
    assert re.search(r"\son[a-z]+=", html) is None and " style=" not in html
    for path in STATIC.rglob("*.js"):
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)  # comments may name them
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "localStorage",
                          "sessionStorage", "document.cookie", "document.write"):  # fmt: skip
            assert forbidden not in code, f"{path.name} uses {forbidden}"
        # Every module comes from the console itself: no CDN, nothing fetched from elsewhere.
        assert all(spec.startswith((".", "/console/")) for spec in re.findall(r'\bfrom\s+"([^"]+)"', code))
        assert re.search(r"fetch\(\s*[\"'`]https?:", code) is None
