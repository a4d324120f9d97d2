"""The fast lanes (kit/fastlane.py) answer exactly as the FastAPI routes they stand in for.

Two apps over one PostgreSQL runtime: core as served (its lanes take POST /api/credits/deduct
and POST /api/usage/events) and core built with ``fast_lanes=False`` (FastAPI answers
everything). Every request goes to both with the same ``X-Request-Id``, so the answers must
be the same bytes: status, body and headers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.middleware import Middleware

from aihub.core.app import create_app
from aihub.kit.middleware import ServiceMiddleware
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, create_user
from tests.core.credits.helpers import service_headers
from tests.core.test_usage import event, fund, reporter

DEDUCT = "/api/credits/deduct"
EVENTS = "/api/usage/events"
# Response headers that must match (the date and server headers come from no app here).
COMPARED = ("content-type", "content-length", "x-request-id", "idempotent-replayed", "allow")


def _app(rt: Runtime, *, fast_lanes: bool) -> Any:
    app = create_app(runtime=rt, fast_lanes=fast_lanes)
    app.state.prepared = True
    app.state.owns_runtime = False
    return app


@pytest.fixture
async def pair(pg_runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    fast, slow = _app(pg_runtime, fast_lanes=True), _app(pg_runtime, fast_lanes=False)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=fast), base_url="http://core.test") as a,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url="http://core.test") as b,
    ):
        yield a, b


@pytest.fixture
async def funded(pg_runtime: Runtime) -> Caller:
    caller = await create_user(pg_runtime)
    await fund(pg_runtime, caller.id, 1_000)
    return caller


_ids = iter(range(1_000_000))


async def _streamed(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """A body sent in chunks without a Content-Length."""
    for chunk in chunks:
        yield chunk


def _summary(response: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    headers = {name: response.headers[name] for name in COMPARED if name in response.headers}
    return response.status_code, response.content, headers


async def same(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
    path: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | list[bytes] | None = None,
    json: Any = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    """The request to both apps (fast first); the answers must be identical."""
    answers = []
    for client in pair:
        request_id = f"lane-{next(_ids):08d}"
        sent = {"X-Request-Id": request_id, **(headers or {})}
        stream = _streamed(content) if isinstance(content, list) else content
        response = await client.post(path, headers=sent, content=stream, json=json, params=params)
        # The same request ID in both bodies, so the bytes compare.
        answers.append((response, response.content.replace(request_id.encode(), b"<rid>")))
    (fast, fast_body), (slow, slow_body) = answers
    assert (fast.status_code, fast_body) == (slow.status_code, slow_body)
    fast_headers, slow_headers = _summary(fast)[2], _summary(slow)[2]
    fast_headers.pop("x-request-id"), slow_headers.pop("x-request-id")
    assert fast_headers == slow_headers
    return fast


def test_the_lanes_are_installed_on_postgresql(pg_runtime: Runtime) -> None:
    """Not a tautology of the pair fixture: without lanes the comparisons below compare
    FastAPI with itself."""
    fast, slow = _app(pg_runtime, fast_lanes=True), _app(pg_runtime, fast_lanes=False)

    def lanes(app: Any) -> set[tuple[str, str]]:
        found: Middleware = next(m for m in app.user_middleware if m.cls is ServiceMiddleware)
        table = found.kwargs["lanes"]
        assert isinstance(table, dict)
        return {(str(method), str(path)) for method, path in table}

    assert lanes(fast) == {("POST", DEDUCT), ("POST", EVENTS)}
    assert lanes(slow) == set()


JSON = {"Content-Type": "application/json"}

MALFORMED: list[bytes] = [
    b'{"userId": ',  # not JSON
    b"\xff\xfe{",  # not UTF-8 at all
    b"[1, 2]",
    b"null",
    b'"text"',
    b"{}",
    b'{"userId": "not-a-uuid", "amount": "ten", "reason": 5}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1, "reason": "usage", "extra": 1}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1.5}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": -3}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1, "metadata": {"a": "x\\u0000y"}}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1, "metadata": {"k\\u0000": 1}}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1, "reason": "\\ud800"}',
    b'{"userId": "00000000-0000-0000-0000-000000000001", "amount": 1, "metadata": "\xed\xa0\x80"}',
]


@pytest.mark.parametrize("body", MALFORMED)
async def test_deduct_malformed_bodies(pair: Any, pg_runtime: Runtime, body: bytes) -> None:
    headers = {**JSON, **service_headers(pg_runtime, "credits:deduct")}
    answer = await same(pair, DEDUCT, headers=headers, content=body)
    assert answer.status_code in (400, 422)


@pytest.mark.parametrize("body", MALFORMED)
async def test_event_malformed_bodies(pair: Any, pg_runtime: Runtime, body: bytes) -> None:
    answer = await same(pair, EVENTS, headers={**JSON, **reporter(pg_runtime)}, content=body)
    assert answer.status_code in (400, 422)


@pytest.mark.parametrize("body", [b"", *MALFORMED[:3], MALFORMED[6], MALFORMED[10]])
@pytest.mark.parametrize(
    "auth",
    [None, "Basic abc", "Bearer", "Bearer not.a.token", "Bearer ahk_nosuchkey"],
)
@pytest.mark.parametrize("path", [DEDUCT, EVENTS])
async def test_bad_or_missing_auth(pair: Any, path: str, auth: str | None, body: bytes) -> None:
    headers = dict(JSON) if body else {}
    if auth is not None:
        headers["Authorization"] = auth
    answer = await same(pair, path, headers=headers, content=body)
    assert answer.status_code in (400, 401, 422)


async def test_wrong_permission(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    deduct = {"userId": funded.id, "amount": 1}
    await same(pair, DEDUCT, headers=reporter(pg_runtime), json=deduct)
    answer = await same(pair, EVENTS, headers=service_headers(pg_runtime, "credits:deduct"), json=event(funded))
    assert answer.status_code == 403
    # A person's token: the user exists, but a plain user may not deduct or report usage.
    await same(pair, DEDUCT, headers=funded.headers, json=deduct)
    assert (await same(pair, EVENTS, headers=funded.headers, json=event(funded))).status_code == 403


async def test_revoked_and_expired_tokens(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    jti = uuid.uuid4().hex
    token = pg_runtime.codec.issue(sub="svc", typ="service", role="service", scopes=["credits:deduct"], jti=jti)
    await pg_runtime.store.set(f"blacklist:{jti}", "1")
    body = {"userId": funded.id, "amount": 1}
    answer = await same(pair, DEDUCT, headers={"Authorization": f"Bearer {token}"}, json=body)
    assert answer.json()["code"] == "TOKEN_REVOKED"
    old = pg_runtime.codec.issue(sub="svc", typ="service", role="service", scopes=["credits:deduct"], now=1_000)
    answer = await same(pair, DEDUCT, headers={"Authorization": f"Bearer {old}"}, json=body)
    assert answer.json()["code"] == "TOKEN_EXPIRED"


async def test_oversized_bodies(pair: Any, pg_runtime: Runtime) -> None:
    limit = pg_runtime.settings.max_body_bytes
    big = b'{"userId": "' + b"a" * limit + b'"}'
    for path in (DEDUCT, EVENTS):
        headers = {**JSON, **service_headers(pg_runtime, "credits:deduct", "usage:write")}
        assert (await same(pair, path, headers=headers, content=big)).status_code == 413
        # Streamed without a length: the limit is enforced while the body arrives.
        chunked = await same(pair, path, headers=headers, content=[big[:1000], big[1000:]])
        assert chunked.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/json; charset=utf-8", "application/x+json"])
async def test_content_types(pair: Any, pg_runtime: Runtime, funded: Caller, content_type: str) -> None:
    headers = {"Content-Type": content_type, **service_headers(pg_runtime, "credits:deduct")}
    body = b'{"userId": "' + funded.id.encode() + b'", "amount": 1, "reason": 7}'
    await same(pair, DEDUCT, headers=headers, content=body)


async def test_query_strings_are_checked_as_by_the_route(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    headers = service_headers(pg_runtime, "credits:deduct")
    answer = await same(pair, DEDUCT, headers=headers, json={"userId": funded.id, "amount": "x"}, params={"q": "\x00"})
    assert answer.status_code == 422


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_bad_idempotency_keys(pair: Any, pg_runtime: Runtime, funded: Caller, key: str) -> None:
    headers = service_headers(pg_runtime, "credits:deduct", key=key)
    await same(pair, DEDUCT, headers=headers, json={"userId": funded.id, "amount": 1})
    # The header's error and the body's, in one 422, in FastAPI's order.
    answer = await same(pair, DEDUCT, headers=headers, json={"userId": funded.id, "amount": "x"})
    assert len(answer.json()["details"]) == 2


async def test_idempotent_deduct_replay_and_reuse(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    """The first deduct through the lane, its replay through both: the replays are the same
    bytes, and a reused key is refused alike."""
    fast, _ = pair
    headers = service_headers(pg_runtime, "credits:deduct", key="replay-1")
    first = await fast.post(DEDUCT, headers=headers, json={"userId": funded.id, "amount": 5})
    assert first.status_code == 201, first.text
    replay = await same(pair, DEDUCT, headers=headers, json={"userId": funded.id, "amount": 5})
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    reused = await same(pair, DEDUCT, headers=headers, json={"userId": funded.id, "amount": 6})
    assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    # A refusal is final for its key too (stored through the lane, replayed by both).
    poor = service_headers(pg_runtime, "credits:deduct", key="replay-2")
    refused = await fast.post(DEDUCT, headers=poor, json={"userId": funded.id, "amount": 10_000})
    assert refused.status_code == 402
    again = await same(pair, DEDUCT, headers=poor, json={"userId": funded.id, "amount": 10_000})
    assert again.json()["code"] == "INSUFFICIENT_CREDITS"


async def test_deducts_answer_alike(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    headers = service_headers(pg_runtime, "credits:deduct")
    answers = [await client.post(DEDUCT, headers=headers, json={"userId": funded.id, "amount": 7}) for client in pair]
    assert [a.status_code for a in answers] == [201, 201]
    assert [a.json()["balanceAfter"] for a in answers] == [993, 986]
    assert answers[0].json().keys() == answers[1].json().keys()
    assert [a.headers["content-type"] for a in answers] == ["application/json"] * 2
    missing = {"userId": str(uuid.uuid4()), "amount": 1}
    assert (await same(pair, DEDUCT, headers=headers, json=missing)).json()["code"] == "ACCOUNT_NOT_FOUND"
    too_much = {"userId": funded.id, "amount": 1_000_000}
    assert (await same(pair, DEDUCT, headers=headers, json=too_much)).json()["code"] == "INSUFFICIENT_CREDITS"
    # An administrator's own token (a person, loaded from the database) deducts through both.
    admin = await create_user(pg_runtime, roles=["admin"])
    by_admin = [await c.post(DEDUCT, headers=admin.headers, json={"userId": funded.id, "amount": 1}) for c in pair]
    assert [a.status_code for a in by_admin] == [201, 201]


async def test_events_answer_alike(pair: Any, pg_runtime: Runtime, funded: Caller) -> None:
    fast, _ = pair
    first = await fast.post(EVENTS, headers=reporter(pg_runtime), json=event(funded, "ev-1"))
    assert first.status_code == 201, first.text
    replay = await same(pair, EVENTS, headers=reporter(pg_runtime), json=event(funded, "ev-1"))
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    reused = await same(pair, EVENTS, headers=reporter(pg_runtime), json=event(funded, "ev-1", inputTokens=5))
    assert reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    unknown = await same(pair, EVENTS, headers=reporter(pg_runtime), json=event(funded, model="no-such-model"))
    assert unknown.status_code == 422
    nobody = await same(pair, EVENTS, headers=reporter(pg_runtime), json=event(Caller(str(uuid.uuid4()), "", "", [])))
    assert nobody.status_code >= 400
    answers = [await c.post(EVENTS, headers=reporter(pg_runtime), json=event(funded)) for c in pair]
    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json().keys() == answers[1].json().keys()
