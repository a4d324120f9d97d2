"""docs/api.md against the running system, both ways.

Operations: the rows of docs/api.md == the operations of the merged OpenAPI document the real
gateway serves in front of real core and auth servers; and every operation core and auth
publish on their own ports is on the page (at the path a client calls through the gateway).
Error codes: the catalogue on the page == the codes the code declares (``AppError`` subclasses
and ``register_code``, collected from the registry after importing every module), statuses
included; every code an operation row cites exists; and no module passes a literal code that
the registry does not know (an AST scan, the safety net under the registry).

A failure names each missing item and the side it is missing from, so whoever adds an endpoint
or a code knows the row to write.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import pkgutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

import aihub
from aihub.gateway.openapi import SERVICE_LOCAL_PATHS, client_path
from aihub.kit.errors import registered_codes
from tests.conftest import LiveServer
from tests.docs import contract
from tests.gateway.conftest import GatewayFactory, Upstream, gateway_settings

SRC = Path(aihub.__file__).resolve().parent
_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def _operations(doc: dict[str, Any]) -> dict[contract.Operation, str]:
    """(METHOD, normalised path) → the path as published."""
    found = {}
    for path, item in doc["paths"].items():
        for method in _HTTP_METHODS:
            if method in item:
                found[(method.upper(), contract.normalise(path))] = path
    return found


def _listing(title: str, items: list[str]) -> str:
    return f"{title}:\n" + "\n".join(f"    {item}" for item in sorted(items))


async def _json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status} {await resp.text()}"
        return await resp.json()


async def test_every_operation_is_documented_and_every_documented_operation_exists(
    live_core: LiveServer,
    live_auth: LiveServer,
    upstreams: dict[str, Upstream],
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gw = await start_gateway(
        gateway_settings(upstreams, core_url=live_core.url, auth_url=live_auth.url), store=live_core.runtime.store
    )
    merged = await _json(http, gw.url + "/openapi.json")
    assert "x-aihub-unavailable" not in merged, merged.get("x-aihub-unavailable")
    page = contract.load()
    assert not page.duplicates, _listing("docs/api.md lists these twice", page.duplicates)

    published = _operations(merged)
    problems = []
    missing_from_page = [
        f"{m} {path}  (service: {merged['paths'][path][m.lower()].get('x-aihub-service', 'gateway')})"
        for (m, _), path in published.items()
        if (m, contract.normalise(path)) not in page.operations
    ]
    if missing_from_page:
        problems.append(
            _listing(
                "in the gateway's /openapi.json but missing from docs/api.md (add a row `| METHOD | `/path` | … |`)",
                missing_from_page,
            )
        )
    missing_from_schema = [
        f"{m} {p}  (docs/api.md line {line})" for (m, p), line in page.operations.items() if (m, p) not in published
    ]
    if missing_from_schema:
        problems.append(
            _listing(
                "in docs/api.md but missing from the gateway's /openapi.json (no such operation, or not routed)",
                missing_from_schema,
            )
        )

    # Each service's own schema, mapped the way the gateway routes it: nothing may be dropped.
    table = gw.gateway.table
    for group, live in (("core", live_core), ("auth", live_auth)):
        own = await _json(http, live.url + "/openapi.json")
        for (method, _), path in _operations(own).items():
            public = path if path in SERVICE_LOCAL_PATHS else client_path(table, group, path)
            if public is None:
                problems.append(f"{group} publishes {method} {path}, but no gateway route leads to it")
            elif (method, contract.normalise(public)) not in page.operations:
                problems.append(f"{group} publishes {method} {path} (clients: {public}); docs/api.md lacks it")
    assert not problems, "\n".join(problems)


def _import_everything() -> None:
    for module in pkgutil.walk_packages(aihub.__path__, "aihub."):
        # Alembic's env runs migrations when imported; __main__ runs the CLI.
        if module.name.startswith("aihub.migrations") or module.name.endswith("__main__"):
            continue
        importlib.import_module(module.name)


def _declared() -> dict[str, set[int | None]]:
    _import_everything()
    codes: dict[str, set[int | None]] = defaultdict(set)
    for entry in registered_codes():
        codes[entry.code].add(entry.status)
    return codes


def _status_text(statuses: set[int | None] | frozenset[int | None]) -> str:
    return ", ".join(sorted("job/4xx" if s is None else str(s) for s in statuses))


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    declared = _declared()
    page = contract.load()
    problems = []
    undocumented = [
        f"{code}  ({_status_text(statuses)}; declared in "
        f"{', '.join(sorted({e.where for e in registered_codes() if e.code == code}))})"
        for code, statuses in declared.items()
        if code not in page.codes
    ]
    if undocumented:
        problems.append(
            _listing(
                "declared in the code but missing from docs/api.md's Error codes table "
                "(add `| `CODE` | status | meaning |`)",
                undocumented,
            )
        )
    unknown = [code for code in page.codes if code not in declared]
    if unknown:
        problems.append(
            _listing(
                "in docs/api.md's Error codes table but declared nowhere in the code "
                "(no AppError subclass or register_code() has it)",
                unknown,
            )
        )
    for code, statuses in page.codes.items():
        if code in declared and set(statuses) != declared[code]:
            problems.append(
                f"{code}: docs/api.md says status {_status_text(statuses) or '(none)'}, "
                f"the code answers {_status_text(declared[code])}"
            )
    for code, lines in page.cited.items():
        if code not in declared:
            problems.append(f"docs/api.md cites {code} (lines {lines}) but no code declares it")
    assert not problems, "\n".join(problems)


def _code(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper():
        return node.value
    return None


def _is_error_status(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int) and 400 <= node.value < 600


def _literal_codes(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals used as error codes: ``code="X"``, the code after a 4xx/5xx status in a
    call or tuple (``error(ctx, 405, "METHOD_NOT_ALLOWED", …)``, ``(413, "PAYLOAD_TOO_LARGE", …)``),
    and the first argument of ``error_body``."""
    candidates: list[ast.AST] = []
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Call):
            candidates += [kw.value for kw in node.keywords if kw.arg == "code"]
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == "error_body" and node.args:
                candidates.append(node.args[0])
            values = list(node.args)
        elif isinstance(node, ast.Tuple):
            values = list(node.elts)
        candidates += [after for before, after in itertools.pairwise(values) if _is_error_status(before)]
    found = []
    for candidate in candidates:
        code = _code(candidate)
        if code is not None:
            found.append((getattr(candidate, "lineno", 0), code))
    return found


def test_no_module_answers_with_an_undeclared_literal_code() -> None:
    declared = _declared()
    seen, problems = 0, []
    for file in sorted(SRC.rglob("*.py")):
        for line, code in _literal_codes(ast.parse(file.read_text(encoding="utf-8"))):
            seen += 1
            if code not in declared:
                problems.append(f"{file.relative_to(SRC.parent)}:{line} answers with {code}, declared nowhere")
    assert seen >= 10, f"the scan found only {seen} literal codes: it no longer recognises how codes are written"
    assert not problems, _listing("declare these with an AppError subclass or register_code()", problems)


def test_the_page_parser_follows_its_conventions() -> None:
    page = contract.parse(
        "## Users\n"
        "| method | path | who |\n|---|---|---|\n"
        "| GET | `/api/users/{user_id}` | `users:read` | → user | `USER_NOT_FOUND`, `AIHUB_X` |\n"
        "| get | `/lowercase` | not a method |\n"
        "| `NOT_A_CODE_HERE` | 404 | outside the section |\n"
        "## Error codes\n"
        "| `USER_NOT_FOUND` | 404 | no such user |\n"
        "| `REPORT_FAILED` | 409, job | both |\n"
        "| `HTTP_ERROR` | 4xx | other |\n"
    )
    assert page.operations == {("GET", "/api/users/{}"): 4}
    assert dict(page.cited) == {"USER_NOT_FOUND": [4]}
    assert page.codes == {
        "USER_NOT_FOUND": frozenset({404}),
        "REPORT_FAILED": frozenset({409, None}),
        "HTTP_ERROR": frozenset({None}),
    }
