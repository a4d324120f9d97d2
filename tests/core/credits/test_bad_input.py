"""Every credits endpoint answers bad input with the one error shape, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from aihub.kit.runtime import Runtime
from tests.conftest import Caller
from tests.core.credits.helpers import assert_error, grant, money, service_headers

ID = str(uuid.uuid4())
POSTS: list[tuple[str, str]] = [
    ("/api/credits/grant", "credits:grant"),
    ("/api/credits/deduct", "credits:deduct"),
    ("/api/credits/refund", "credits:grant"),
    ("/api/credits/holds", "credits:deduct"),
    (f"/api/credits/holds/{ID}/capture", "credits:deduct"),
    (f"/api/credits/holds/{ID}/release", "credits:deduct"),
]
GETS = [
    "/api/credits/balance",
    "/api/credits/transactions",
    f"/api/credits/accounts/{ID}",
    f"/api/credits/accounts/{ID}/transactions",
]


@pytest.mark.parametrize("path", [p for p, _ in POSTS] + ["/api/credits/check"])
async def test_posts_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.post(path, json={}), 401, "UNAUTHORIZED")
    assert_error(await client.post(path, json={}, headers={"Authorization": "Bearer nope"}), 401, "INVALID_TOKEN")


@pytest.mark.parametrize("path", GETS)
async def test_gets_need_a_token(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(path), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(("path", "permission"), POSTS)
async def test_posts_need_their_permission(
    client: httpx.AsyncClient, runtime: Runtime, user: Caller, path: str, permission: str
) -> None:
    body = {"userId": user.id, "amount": 1, "transactionId": ID}
    assert_error(await client.post(path, json=body, headers=user.headers), 403, "FORBIDDEN")
    wrong_scope = service_headers(runtime, "credits:read")
    assert_error(await client.post(path, json=body, headers=wrong_scope), 403, "FORBIDDEN")


async def test_admin_reads_need_credits_read(client: httpx.AsyncClient, user: Caller) -> None:
    for path in GETS[2:]:
        assert_error(await client.get(path, headers=user.headers), 403, "FORBIDDEN")


async def test_me_endpoints_need_a_person(client: httpx.AsyncClient, runtime: Runtime) -> None:
    assert_error(await client.get("/api/credits/balance", headers=money(runtime)), 403, "FORBIDDEN")


BAD_AMOUNTS: list[Any] = [0, -1, 1.5, "5", True, None, 10**13, 2**63, []]


@pytest.mark.parametrize("path", ["/api/credits/grant", "/api/credits/deduct", "/api/credits/holds"])
@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bad_amounts(client: httpx.AsyncClient, runtime: Runtime, user: Caller, path: str, amount: Any) -> None:
    response = await client.post(path, json={"userId": user.id, "amount": amount}, headers=money(runtime))
    body = assert_error(response, 422, "VALIDATION_ERROR")
    assert any("amount" in d["field"] for d in body["details"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/credits/grant", {"userId": "not-a-uuid", "amount": 1}),
        ("/api/credits/grant", {"amount": 1}),
        ("/api/credits/grant", {"userId": ID, "amount": 1, "reason": "hold_capture"}),
        ("/api/credits/grant", {"userId": ID, "amount": 1, "unknown": 1}),
        ("/api/credits/deduct", {"userId": ID, "amount": 1, "reason": "free money"}),
        ("/api/credits/deduct", {"userId": ID, "amount": 1, "metadata": "text"}),
        ("/api/credits/refund", {"transactionId": "x"}),
        ("/api/credits/refund", {"transactionId": ID, "amount": 0}),
        ("/api/credits/holds", {"userId": ID, "amount": 1, "ttlSeconds": 0}),
        ("/api/credits/holds", {"userId": ID, "amount": 1, "ttlSeconds": 10**9}),
        (f"/api/credits/holds/{ID}/capture", {"amount": -3}),
        ("/api/credits/check", {"amount": -1}),
        ("/api/credits/check", {}),
    ],
)
async def test_malformed_bodies(client: httpx.AsyncClient, runtime: Runtime, path: str, body: dict[str, Any]) -> None:
    assert_error(await client.post(path, json=body, headers=money(runtime)), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("path", [p for p, _ in POSTS if not p.endswith("/release")])  # release has no body
async def test_not_json(client: httpx.AsyncClient, runtime: Runtime, path: str) -> None:
    headers = {**money(runtime), "Content-Type": "application/json"}
    response = await client.post(path, content=b"{nope", headers=headers)
    assert response.status_code in (400, 422), response.text
    assert response.json()["code"] in ("INVALID_JSON", "VALIDATION_ERROR")


async def test_bad_ids_in_paths(client: httpx.AsyncClient, runtime: Runtime) -> None:
    # Something that is no UUID where a UUID belongs names no resource (see kit.routing).
    for path in ("/api/credits/holds/nope/capture", "/api/credits/holds/nope/release"):
        assert_error(await client.post(path, headers=money(runtime)), 404, "NOT_FOUND")
    assert_error(await client.get("/api/credits/accounts/nope", headers=money(runtime)), 404, "NOT_FOUND")
    assert_error(await client.post(f"/api/credits/holds/{ID}/capture", headers=money(runtime)), 404, "HOLD_NOT_FOUND")


async def test_bad_queries(client: httpx.AsyncClient, user: Caller) -> None:
    for query in ("limit=0", "limit=101", "cursor=%%%", "reason=gift", "from=yesterday"):
        assert_error(
            await client.get(f"/api/credits/transactions?{query}", headers=user.headers),
            422,
            "VALIDATION_ERROR",
        )


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_bad_idempotency_keys(client: httpx.AsyncClient, runtime: Runtime, user: Caller, key: str) -> None:
    await grant(client, runtime, user.id, 5)
    headers = {**money(runtime), "Idempotency-Key": key}
    response = await client.post("/api/credits/deduct", json={"userId": user.id, "amount": 1}, headers=headers)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_wrong_method(client: httpx.AsyncClient, runtime: Runtime) -> None:
    assert (await client.get("/api/credits/deduct", headers=money(runtime))).status_code == 405
