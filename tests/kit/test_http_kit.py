"""The kit's HTTP behaviour on a small service: error shape, request IDs, limits, health, metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import cast

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from aihub.config import Settings
from aihub.kit.app import create_service_app
from aihub.kit.deps import NO_CALLERS
from aihub.kit.runtime import Runtime

router = APIRouter()


class Item(BaseModel):
    name: str
    qty: int


@router.post("/items", status_code=201)
async def make_item(item: Item) -> Item:
    return item


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internal detail")


@pytest.fixture
async def kit_client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app("test", runtime, [router], access=NO_CALLERS, description="kit test")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://kit.test") as c:
        yield c


def check_shape(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert body["requestId"] == response.headers["x-request-id"]
    assert set(body) <= {"code", "message", "details", "requestId"}
    return dict(body)


async def test_not_found_and_method_not_allowed(kit_client: httpx.AsyncClient) -> None:
    check_shape(await kit_client.get("/nowhere"), 404, "NOT_FOUND")
    check_shape(await kit_client.delete("/items"), 405, "METHOD_NOT_ALLOWED")


async def test_validation_error_lists_fields(kit_client: httpx.AsyncClient) -> None:
    body = check_shape(await kit_client.post("/items", json={"name": "x", "qty": "many"}), 422, "VALIDATION_ERROR")
    assert body["details"] == [
        {
            "field": "body.qty",
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        }
    ]
    missing = check_shape(await kit_client.post("/items", json={}), 422, "VALIDATION_ERROR")
    assert {d["field"] for d in cast(list[dict[str, str]], missing["details"])} == {"body.name", "body.qty"}


async def test_malformed_json_and_media_type(kit_client: httpx.AsyncClient) -> None:
    check_shape(
        await kit_client.post("/items", content=b'{"name": ', headers={"content-type": "application/json"}),
        400,
        "INVALID_JSON",
    )
    check_shape(
        await kit_client.post(
            "/items", content=b"name=x", headers={"content-type": "application/x-www-form-urlencoded"}
        ),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    check_shape(await kit_client.post("/items", content=b"{}"), 415, "UNSUPPORTED_MEDIA_TYPE")
    ok = await kit_client.post(
        "/items", content=b'{"name":"a","qty":1}', headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 201


async def test_body_too_large_declared_and_streamed(kit_client: httpx.AsyncClient, settings: Settings) -> None:
    big = json.dumps({"name": "x" * (settings.max_body_bytes + 10), "qty": 1}).encode()
    check_shape(
        await kit_client.post("/items", content=big, headers={"content-type": "application/json"}),
        413,
        "PAYLOAD_TOO_LARGE",
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b" " * 65536  # no Content-Length: the limit is enforced while the body streams in

    streamed = await kit_client.post("/items", content=chunks(), headers={"content-type": "application/json"})
    check_shape(streamed, 413, "PAYLOAD_TOO_LARGE")


async def test_unexpected_error_is_a_clean_500(kit_client: httpx.AsyncClient) -> None:
    body = check_shape(await kit_client.get("/boom"), 500, "INTERNAL_ERROR")
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


async def test_request_id_kept_when_valid_replaced_when_not(kit_client: httpx.AsyncClient) -> None:
    kept = await kit_client.get("/health", headers={"X-Request-Id": "abc.DEF_123-x"})
    assert kept.headers["x-request-id"] == "abc.DEF_123-x"
    for bad in (b"has space", b"x" * 129, b"semi;colon", "ünï".encode()):
        replaced = await kit_client.get("/health", headers={b"X-Request-Id": bad})
        assert replaced.headers["x-request-id"].encode() != bad
        assert len(replaced.headers["x-request-id"]) == 32
    fresh = await kit_client.get("/health")
    assert len(fresh.headers["x-request-id"]) == 32


async def test_health_ready_and_metrics(kit_client: httpx.AsyncClient, runtime: Runtime) -> None:
    assert (await kit_client.get("/health")).json() == {"status": "ok"}
    ready = await kit_client.get("/health/ready")
    assert ready.status_code == 200
    expected_redis = "ok" if runtime.store.kind == "redis" else "memory"
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": expected_redis}}
    await kit_client.get("/nowhere")
    metrics = await kit_client.get("/metrics")
    assert metrics.status_code == 200
    assert 'aihub_http_requests_total{method="GET",route="unmatched",service="test",status="404"}' in metrics.text


async def test_metrics_refused_from_outside(runtime: Runtime) -> None:
    app = create_service_app("test", runtime, [router], access=NO_CALLERS, description="kit test")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://kit.test") as c:
        check_shape(await c.get("/metrics"), 403, "FORBIDDEN")


async def _ready(settings: Settings) -> httpx.Response:
    rt = Runtime.build(settings)
    app = create_service_app("test", rt, [router], access=NO_CALLERS, description="kit test")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kit.test") as c:
            return await c.get("/health/ready")
    finally:
        await rt.close()


async def test_readiness_reports_a_down_dependency(sqlite_url: str) -> None:
    # Redis on a port where nothing listens, database fine: 503 naming the failing check.
    ready = await _ready(
        Settings(env="test", database_url=sqlite_url, redis_url="redis://127.0.0.1:1/0", auto_migrate=False)
    )
    assert ready.status_code == 503
    assert ready.json() == {"status": "down", "checks": {"database": "ok", "redis": "down"}}
    ready = await _ready(
        Settings(env="test", database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none", auto_migrate=False)
    )
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "down"
