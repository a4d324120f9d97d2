"""Bad input, class by class, through the real HTTP stack of core and auth, on both engines.

Each class is handled in one place (``aihub.kit.inputs``, ``kit.schemas``, ``kit.routing``,
``pricing.service.bounded_charge``); these tests try several variants of each on many
endpoints and require the one error shape with a 4xx, never a 500.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from aihub.kit.runtime import Runtime
from tests.auth.conftest import assert_error
from tests.conftest import Caller, create_user

NUL = "\u0000"


def _fields(response: httpx.Response) -> set[str]:
    return {d["field"] for d in response.json().get("details") or []}


def _bad(response: httpx.Response, field: str | None = None) -> None:
    assert_error(response, 422, "VALIDATION_ERROR")
    if field is not None:  # the field itself, or something inside it
        assert any(f == field or f.startswith(field + ".") for f in _fields(response)), response.json()


# ------------------------------------------------------------------ 1. NUL and lone surrogates


async def test_nul_in_any_string_or_parameter_is_refused(
    client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin: Caller, user: Caller
) -> None:
    # Unauthenticated bodies (auth), at any depth, keys included.
    _bad(await auth_client.post("/login", json={"email": f"a{NUL}@x.io", "password": "x"}), "body.email")
    _bad(
        await auth_client.post("/register", json={"email": "b@x.io", "password": f"long enough{NUL}"}), "body.password"
    )
    _bad(
        await client.patch("/api/users/me", headers=user.headers, json={"displayName": f"me{NUL}"}), "body.displayName"
    )
    grant = {"userId": user.id, "amount": 5, "note": "ok", "metadata": {"deep": {f"k{NUL}": [1, f"v{NUL}"]}}}
    response = await client.post("/api/credits/grant", headers=admin.headers, json=grant)
    _bad(response)
    assert {"body.metadata.deep.k\\u0000", "body.metadata.deep.k\\u0000.1"} <= _fields(response)
    _bad(await client.post("/api/promo-codes/redeem", headers=user.headers, json={"code": f"X{NUL}Y"}), "body.code")
    _bad(await client.post("/api/roles", headers=admin.headers, json={"name": "ok", "level": 1, "description": NUL}))
    _bad(await client.post("/api/permissions", headers=admin.headers, json={"name": "a:b", "description": f"{NUL}"}))
    # Query and path parameters, declared or not; before authentication, so no query ever sees it.
    _bad(await client.get("/api/users", headers=admin.headers, params={"q": f"a{NUL}"}), "query.q")
    _bad(await client.get("/api/users", params={"q": NUL}), "query.q")
    _bad(await client.get("/api/audit-logs", headers=admin.headers, params={"action": NUL}), "query.action")
    _bad(await client.get("/api/usage", headers=user.headers, params={"model": NUL}), "query.model")
    _bad(await client.get("/api/pricing", params={"unknown": NUL}), "query.unknown")
    _bad(await client.get("/api/roles/ad%00min", headers=admin.headers), "path.name")
    _bad(await client.delete(f"/api/users/{user.id}/permissions/a%00b", headers=admin.headers), "path.permission")
    # Nothing was poisoned: the same endpoints still work.
    assert (await client.get("/api/users", headers=admin.headers, params={"q": "user"})).status_code == 200
    assert (await auth_client.post("/register", json={"email": "c@x.io", "password": "long enough"})).status_code == 201


async def test_lone_surrogates_are_refused(
    client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin: Caller, user: Caller
) -> None:
    headers = {"content-type": "application/json"}
    # Where no string type checks them (metadata is free JSON), they used to reach orjson: 500.
    for metadata in ('{"\\ud800": 1}', '{"a": ["\\udfff"]}', '{"a": {"b": "x\\ud83d"}}'):
        raw = f'{{"userId": "{user.id}", "amount": 1, "metadata": {metadata}}}'.encode()
        _bad(
            await client.post("/api/credits/grant", content=raw, headers={**headers, **admin.headers}), "body.metadata"
        )
    for raw in (
        b'{"email": "\\ud800@x.io", "password": "long enough"}',  # escaped, lower case
        b'{"email": "e@x.io", "password": "long enough\\uDFFF"}',  # escaped, upper case
        b'{"email": "\xed\xa0\x80@x.io", "password": "long enough"}',  # raw CESU-8 bytes
    ):
        _bad(await auth_client.post("/register", content=raw, headers=headers))
    raw = b'{"displayName": "ok", "\\ud83d": 1}'  # a bad key
    _bad(await client.patch("/api/users/me", content=raw, headers={**headers, **user.headers}))
    # A valid pair (an emoji) is text like any other.
    ok = b'{"displayName": "\\ud83d\\ude00"}'
    response = await client.patch("/api/users/me", content=ok, headers={**headers, **user.headers})
    assert response.status_code == 200 and response.json()["displayName"] == "\U0001f600"


# ------------------------------------------------------------------ 2. timestamps

FILTERS: list[tuple[str, dict[str, str]]] = [
    ("/api/credits/transactions", {}),
    ("/api/usage", {}),
    ("/api/usage/summary", {}),
    ("/api/audit-logs", {}),
    ("/api/billing/report", {}),
    ("/api/analytics/overview", {}),
]
BAD_TIMES = [
    "9999-12-31T23:59:59-14:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+14:00",  # year 0 in UTC
    "0.5",
    "-9286",
    "1700000000",
    "2025-01-01",  # a date is not a date-time
    "2025-13-01T00:00:00Z",
    "yesterday",
]


async def test_timestamps_are_rfc3339_within_years_1_to_9999(client: httpx.AsyncClient, admin: Caller) -> None:
    for path, extra in FILTERS:
        for name in ("from", "to"):
            for value in BAD_TIMES:
                response = await client.get(path, headers=admin.headers, params={**extra, name: value})
                _bad(response, f"query.{name}")
        good = {"from": "2025-01-01T00:00:00Z", "to": "9999-12-31T23:59:59+00:00"}
        assert (await client.get(path, headers=admin.headers, params=good)).status_code in (200, 202), path
    # Bodies: promo windows, as strings and as bare JSON numbers.
    for field in ("startsAt", "expiresAt"):
        for raw in [*BAD_TIMES, 0, 1700000000, -9286.5, True]:
            response = await client.post("/api/promo-codes", headers=admin.headers, json={"credits": 1, field: raw})
            _bad(response, f"body.{field}")
    created = await client.post(
        "/api/promo-codes", headers=admin.headers, json={"credits": 1, "expiresAt": "9999-12-31T09:59:59-14:00"}
    )
    assert created.status_code == 201 and created.json()["expiresAt"].startswith("9999-12-31T23:59:59")
    patch = await client.patch(
        f"/api/promo-codes/{created.json()['id']}",
        headers=admin.headers,
        json={"expiresAt": "9999-12-31T23:59:59-14:00"},
    )
    _bad(patch, "body.expiresAt")


# ------------------------------------------------------------------ 3. metadata

BAD_METADATA: list[Any] = [
    {"n": 2**64},
    {"n": 2**63},
    {"n": -(2**63) - 1},
    {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}},
    {"big": "x" * 9000},
    {f"k{i}": i for i in range(51)},
    ["not", "an", "object"],
    "text",
    {"ok": {"nul": NUL}},
]


async def test_metadata_is_a_bounded_json_object(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    bodies = {
        "/api/credits/grant": {"userId": user.id, "amount": 10},
        "/api/credits/deduct": {"userId": user.id, "amount": 1},
        "/api/credits/holds": {"userId": user.id, "amount": 1},
    }
    for path, body in bodies.items():
        for metadata in BAD_METADATA:
            _bad(await client.post(path, headers=admin.headers, json={**body, "metadata": metadata}), "body.metadata")
        # Raw JSON a client may send: 1e400 parses as infinity; a lone surrogate in a value.
        for raw in ('{"r": 1e400}', '{"s": "\\udc00"}'):
            content = f'{{"userId": "{user.id}", "amount": 1, "metadata": {raw}}}'.encode()
            headers = {**admin.headers, "content-type": "application/json"}
            _bad(await client.post(path, headers=headers, content=content))
    good = {"n": 2**63 - 1, "m": -(2**63), "f": 1.5, "s": "é", "l": [1, None, True], "d": {"a": {"b": {}}}}
    response = await client.post(
        "/api/credits/grant", headers=admin.headers, json={**bodies["/api/credits/grant"], "metadata": good}
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == good


async def test_usage_event_metadata_follows_the_same_rule(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller
) -> None:
    reporter = await create_user(runtime, roles=["admin"])
    event = {"requestId": "r-1", "userId": user.id, "provider": "openai", "model": "gpt-4o", "inputTokens": 1}
    for metadata in BAD_METADATA:
        response = await client.post(
            "/api/usage/events", headers=reporter.headers, json={**event, "metadata": metadata}
        )
        _bad(response, "body.metadata")


# ------------------------------------------------------------------ 4. priced cost beyond int64


async def test_priced_cost_cannot_overflow(
    client: httpx.AsyncClient, runtime: Runtime, admin: Caller, user: Caller
) -> None:
    url = "/api/pricing/acme/huge"
    for price in (10**12, 10**6 + 0.5, 9.3e18, 1e300):
        body = {"inputPer1k": price, "outputPer1k": 0}
        _bad(await client.put(url, headers=admin.headers, json=body), "body.inputPer1k")
    assert (
        await client.put(url, headers=admin.headers, json={"inputPer1k": 10**6, "outputPer1k": 10**6})
    ).status_code == 201
    event = {"userId": user.id, "provider": "acme", "model": "huge"}
    for tokens in (10**12 + 1, 2**63, 10**30):
        response = await client.post(
            "/api/usage/events", headers=admin.headers, json={**event, "requestId": "big", "inputTokens": tokens}
        )
        _bad(response, "body.inputTokens")
    # The largest allowed price times the largest token counts: refused, never a database overflow.
    most = {**event, "requestId": "most", "inputTokens": 10**12, "outputTokens": 10**12}
    assert_error(await client.post("/api/usage/events", headers=admin.headers, json=most), 422, "COST_OUT_OF_RANGE")
    # A price stored before the bounds existed (at the column's limit) cannot overflow either.
    legacy = "999999999999.999999"
    async with runtime.engine.begin() as conn:
        await conn.execute(
            text("UPDATE model_prices SET input_per_1k = :p WHERE provider = 'acme' AND model = 'huge'"),
            {"p": legacy if runtime.settings.is_sqlite else Decimal(legacy)},
        )
    runtime_event = {**event, "requestId": "legacy", "inputTokens": 10**12}
    assert_error(
        await client.post("/api/usage/events", headers=admin.headers, json=runtime_event), 422, "COST_OUT_OF_RANGE"
    )
    # Small usage of the same model is charged as usual (402: the user has no credits).
    small = {**event, "requestId": "small", "inputTokens": 1}
    assert_error(await client.post("/api/usage/events", headers=admin.headers, json=small), 402, "INSUFFICIENT_CREDITS")


# ------------------------------------------------------------------ 5. contract edges


async def test_integers_are_strict(client: httpx.AsyncClient, admin: Caller, user: Caller) -> None:
    assert (
        await client.post("/api/roles", headers=admin.headers, json={"name": "tester", "level": 5})
    ).status_code == 201
    for level in (False, True, 5.0, "5", [5]):
        _bad(await client.patch("/api/roles/tester", headers=admin.headers, json={"level": level}), "body.level")
        _bad(
            await client.post("/api/roles", headers=admin.headers, json={"name": "other", "level": level}), "body.level"
        )
    for value in (True, 1.0, "10"):
        _bad(
            await client.put(
                "/api/quotas/role:user", headers=admin.headers, json={"period": "day", "maxCredits": value}
            ),
            "body.maxCredits",
        )
        _bad(await client.post("/api/credits/grant", headers=admin.headers, json={"userId": user.id, "amount": value}))
    assert (await client.patch("/api/roles/tester", headers=admin.headers, json={"level": 0})).json()["level"] == 0


LISTS = [
    "/api/pricing",
    "/api/pricing/openai/gpt-4o/history",
    "/api/roles",
    "/api/permissions",
    "/api/users",
    "/api/credits/transactions",
    "/api/usage",
    "/api/promo-codes",
    "/api/audit-logs",
    "/api/sora/sessions",
    "/api/billing/jobs",
    "/api/analytics/jobs",
]


async def test_every_list_refuses_a_limit_out_of_range(
    client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin: Caller
) -> None:
    for target, path in [*((client, p) for p in LISTS), (auth_client, "/service-tokens")]:
        for limit in ("-5", "0", "101", "1e3", "true", "abc", ""):
            _bad(await target.get(path, headers=admin.headers, params={"limit": limit}), "query.limit")
        _bad(await target.get(path, headers=admin.headers, params={"cursor": "%%%"}))
        assert (await target.get(path, headers=admin.headers, params={"limit": 100})).status_code == 200, path


async def test_short_lists_page_with_limit_and_cursor(client: httpx.AsyncClient, admin: Caller) -> None:
    everything = (await client.get("/api/permissions", headers=admin.headers)).json()
    assert everything["nextCursor"] is None
    names, cursor = [], None
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/permissions", headers=admin.headers, params=params)).json()
        assert len(page["items"]) <= 5
        names += [p["name"] for p in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert names == [p["name"] for p in everything["items"]]
    prices = (await client.get("/api/pricing", params={"limit": 2})).json()
    assert len(prices["items"]) == 2 and prices["nextCursor"]


async def test_literal_paths_are_not_shadowed_by_parameters(client: httpx.AsyncClient, user: Caller) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await client.request(method, "/api/promo-codes/redeem", headers=user.headers)
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers["allow"] == "POST"
    for method, path, allow in (
        ("DELETE", "/api/users/me", "GET, PATCH"),
        ("GET", "/api/promo-codes/batch", "POST"),
        ("POST", f"/api/users/{uuid.uuid4()}", "DELETE, GET, PATCH"),
        ("DELETE", "/api/pricing/openai/gpt-4o/history", "GET"),
    ):
        response = await client.request(method, path, headers=user.headers)
        assert_error(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers["allow"] == allow, (method, path)
    # Something that is no UUID where a UUID belongs names no resource.
    for path in ("/api/users/not-a-uuid", "/api/credits/holds/nope/capture", "/api/promo-codes/xyz/redemptions"):
        assert_error(await client.get(path, headers=user.headers), 404, "NOT_FOUND")
    # Upper-case and undashed UUIDs still reach their route.
    for form in (str(uuid.uuid4()).upper(), uuid.uuid4().hex):
        assert_error(await client.get(f"/api/users/{form}", headers=user.headers), 403, "FORBIDDEN")


@pytest.mark.parametrize("service", ["core", "auth"])
async def test_openapi_lists_every_status_each_operation_answers(
    client: httpx.AsyncClient, auth_client: httpx.AsyncClient, service: str
) -> None:
    """Walk the schema: every operation documents the error shape for 422 (and the body checks
    on body methods); unauthenticated calls answer a documented status; every method a path
    does not document answers 405 with ``Allow`` naming exactly the documented ones."""
    target = client if service == "core" else auth_client
    schema = (await target.get("/openapi.json")).json()
    assert "HTTPValidationError" not in schema.get("components", {}).get("schemas", {})
    checked = 0
    for template, operations in schema["paths"].items():
        path = template
        for name in [p.strip("{}") for p in template.split("/") if p.startswith("{")]:
            path = path.replace("{" + name + "}", str(uuid.uuid4()) if "id" in name.lower() else "x-y")
        documented = {method.upper() for method in operations}
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" in responses, (method, template)
            for status, spec in responses.items():
                if int(status) >= 400:
                    ref = spec["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorOut"), (method, template, status)
            if method.upper() in ("POST", "PUT", "PATCH"):
                assert {"400", "413", "415"} <= set(responses), (method, template)
            kwargs: dict[str, Any] = {"json": {}} if "requestBody" in operation else {}
            response = await target.request(method.upper(), path, **kwargs)
            assert str(response.status_code) in responses, (method, template, response.status_code, response.text)
            if "401" in responses and template not in ("/login", "/refresh"):
                assert response.status_code == 401, (method, template, response.status_code)
            checked += 1
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - documented:
            response = await target.request(method, path)
            assert_error(response, 405, "METHOD_NOT_ALLOWED")
            assert set(response.headers["allow"].split(", ")) == documented, (method, template)
    assert checked > (40 if service == "core" else 8)
