"""Bad input on every auth endpoint: the one error shape with a precise code, never a 500."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.auth.conftest import assert_error, signed_up
from tests.conftest import Caller

POSTS = ["/register", "/login", "/refresh", "/logout", "/service-tokens"]


async def _headers(auth: httpx.AsyncClient, admin: Caller, path: str) -> dict[str, str]:
    if path == "/service-tokens":
        return admin.headers
    if path == "/logout":
        return (await signed_up(auth, f"input-{uuid.uuid4().hex[:8]}@example.com")).headers
    return {}


@pytest.mark.parametrize("path", POSTS)
async def test_malformed_json(auth_client: httpx.AsyncClient, admin: Caller, path: str) -> None:
    headers = {**await _headers(auth_client, admin, path), "Content-Type": "application/json"}
    response = await auth_client.post(path, content=b'{"email": ', headers=headers)
    assert_error(response, 400, "INVALID_JSON")


@pytest.mark.parametrize("path", POSTS)
async def test_wrong_content_type(auth_client: httpx.AsyncClient, admin: Caller, path: str) -> None:
    headers = {**await _headers(auth_client, admin, path), "Content-Type": "text/plain"}
    response = await auth_client.post(path, content=b"email=a@b.c&password=x", headers=headers)
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    form = await auth_client.post(path, data={"email": "a@b.c"}, headers=await _headers(auth_client, admin, path))
    assert_error(form, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("path", POSTS)
async def test_oversized_body(auth_client: httpx.AsyncClient, admin: Caller, path: str) -> None:
    headers = await _headers(auth_client, admin, path)
    response = await auth_client.post(path, json={"email": "a" * 2_000_000}, headers=headers)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/register", {}, "body.email"),
        ("/register", {"email": "a@example.com"}, "body.password"),
        ("/register", {"email": "a@example.com", "password": "x" * 257}, "body.password"),
        ("/register", {"email": "a" * 400 + "@example.com", "password": "long-enough"}, "body.email"),
        ("/register", {"email": "a@example.com", "password": "long-enough", "role": "admin"}, "body.role"),
        ("/register", {"email": 5, "password": "long-enough"}, "body.email"),
        ("/register", [1, 2], "body"),
        ("/login", {"email": "a@example.com"}, "body.password"),
        ("/login", {"email": "a@example.com", "password": ""}, "body.password"),
        ("/login", {"email": "a@example.com", "password": "p" * 10_000}, "body.password"),
        ("/login", {"password": "x"}, "body.email"),
        ("/refresh", {}, "body.refreshToken"),
        ("/refresh", {"refreshToken": ""}, "body.refreshToken"),
        ("/refresh", {"refreshToken": "r" * 600}, "body.refreshToken"),
        ("/refresh", {"refresh_token": "abc"}, "body.refreshToken"),
        ("/refresh", {"refreshToken": None}, "body.refreshToken"),
        ("/logout", {"refreshToken": 12}, "body.refreshToken"),
        ("/service-tokens", {"name": "n" * 101, "scopes": ["users:read"]}, "body.name"),
        ("/service-tokens", {"name": "x", "scopes": ["u"]}, "body.scopes.0"),
        ("/service-tokens", {"name": "x", "scopes": ["users:read"] * 51}, "body.scopes"),
    ],
)
async def test_invalid_fields(
    auth_client: httpx.AsyncClient, admin: Caller, path: str, body: object, field: str
) -> None:
    response = await auth_client.post(path, json=body, headers=await _headers(auth_client, admin, path))
    details = assert_error(response, 422, "VALIDATION_ERROR")["details"]
    assert field in [d["field"] for d in details], details


async def test_register_invalid_email_shape(auth_client: httpx.AsyncClient) -> None:
    response = await auth_client.post("/register", json={"email": "not-an-email", "password": "long-enough"})
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_empty_body_where_one_is_required(auth_client: httpx.AsyncClient) -> None:
    assert_error(await auth_client.post("/login"), 422, "VALIDATION_ERROR")
    assert_error(
        await auth_client.post("/refresh", content=b"", headers={"Content-Type": "application/json"}),
        422,
        "VALIDATION_ERROR",
    )


async def test_unknown_route_and_method(auth_client: httpx.AsyncClient) -> None:
    assert_error(await auth_client.get("/nope"), 404, "NOT_FOUND")
    assert_error(await auth_client.get("/login"), 405, "METHOD_NOT_ALLOWED")
    assert_error(await auth_client.delete("/me"), 405, "METHOD_NOT_ALLOWED")


async def test_bad_authorization_headers(auth_client: httpx.AsyncClient) -> None:
    for value in ("Basic abc", "Bearer", "Bearer not.a.jwt", "Bearer " + "a" * 5000):
        assert_error(await auth_client.get("/me", headers={"Authorization": value}), 401, "INVALID_TOKEN")
    assert_error(await auth_client.post("/logout"), 401, "UNAUTHORIZED")


async def test_health_and_openapi(auth_client: httpx.AsyncClient) -> None:
    assert (await auth_client.get("/health")).json() == {"status": "ok"}
    ready = await auth_client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    paths = (await auth_client.get("/openapi.json")).json()["paths"]
    for path in (
        "/register",
        "/login",
        "/refresh",
        "/logout",
        "/me",
        "/service-tokens",
        "/service-tokens/{token_id}",
        "/.well-known/jwks.json",
    ):
        assert path in paths
