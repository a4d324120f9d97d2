"""``/api/gateway/blocked-ips`` (issue 13, item 13): live permission, bounded input, RFC 3339
times, and no block that locks out the caller or everyone unless forced."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp

from aihub.kit.jwt import TokenCodec
from aihub.kit.store import Store
from tests.conftest import LiveServer, create_user
from tests.gateway.conftest import OpenGateway, Upstream, bearer

API = "/api/gateway/blocked-ips"
# The caller comes through a trusted proxy, so its address is the one X-Forwarded-For names.
CALLER = {"X-Forwarded-For": "198.51.100.7"}


async def test_a_demoted_or_deleted_admin_loses_the_block_list_at_once(
    upstreams: dict[str, Upstream],
    open_gateway: OpenGateway,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(gateway_trusted_proxies="127.0.0.1/32")
    gw.gateway.admins.ttl = 0.0  # every call asks core: what a demotion sees once the cache has run out
    demoted, gone, kept = (bearer(codec.issue(sub=sub, role="admin")) for sub in ("demoted", "gone", "kept"))
    for headers in (demoted, gone, kept):
        async with http.get(gw.url + API, headers={**headers, **CALLER}) as resp:
            assert resp.status == 200
    upstreams["core"].demoted.add("demoted")
    upstreams["core"].gone.add("gone")
    for headers, status in ((demoted, 403), (gone, 401), (kept, 200)):
        async with http.get(gw.url + API, headers={**headers, **CALLER}) as resp:
            assert resp.status == status
        async with http.post(
            gw.url + API, json={"ip": "0.0.0.0/0", "force": True}, headers={**headers, **CALLER}
        ) as resp:
            assert resp.status == (201 if status == 200 else status)
            if status == 200:
                assert (await resp.json())["ip"] == "0.0.0.0/0"


async def test_the_live_answer_is_cached_briefly(
    upstreams: dict[str, Upstream], open_gateway: OpenGateway, http: aiohttp.ClientSession, codec: TokenCodec
) -> None:
    gw = await open_gateway()
    assert 0 < gw.gateway.admins.ttl <= 5
    admin = bearer(codec.issue(sub="boss", role="admin"))
    for _ in range(5):
        async with http.get(gw.url + API, headers=admin) as resp:
            assert resp.status == 200
    assert upstreams["core"].permission_checks == 1
    # A token that does not even claim the permission is refused without asking core.
    async with http.get(gw.url + API, headers=bearer(codec.issue(sub="pleb", role="user"))) as resp:
        assert resp.status == 403
    assert upstreams["core"].permission_checks == 1


async def test_core_unreachable_is_503_not_a_guess(
    open_gateway: OpenGateway,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
    dead_port: int,
) -> None:
    gw = await open_gateway(core_url=f"http://127.0.0.1:{dead_port}")
    async with http.get(gw.url + API, headers=bearer(codec.issue(sub="boss", role="admin"))) as resp:
        assert resp.status in (502, 503)
        assert (await resp.json())["code"] in ("SERVICE_UNAVAILABLE", "BAD_GATEWAY")


async def test_block_bodies_are_bounded_typed_and_answered_in_rfc3339(
    open_gateway: OpenGateway,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(gateway_trusted_proxies="127.0.0.1/32", store=store)
    admin = {**bearer(codec.issue(sub="boss", role="admin")), **CALLER}
    url = gw.url + API
    big = b'{"ip": "203.0.113.9", "pad": "' + b"x" * 2_000_000 + b'"}'

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length announced
        for i in range(0, len(big), 65_536):
            yield big[i : i + 65_536]

    for data in (io.BytesIO(big), chunked()):
        async with http.post(url, data=data, headers={**admin, "Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["code"] == "PAYLOAD_TOO_LARGE"
    async with http.post(url, data=b"203.0.113.9", headers={**admin, "Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
        assert (await resp.json())["code"] == "UNSUPPORTED_MEDIA_TYPE"
    for bad in (
        {"ip": "203.0.113.9", "reason": "r" * 5_000},  # under the body limit, over the reason limit
        {"ip": "203.0.113.9", "reason": 5},
        {"ip": "203.0.113.9", "ttlSeconds": 10**30},
        {"ip": "203.0.113.9", "ttlSeconds": 0},
        {"ip": "203.0.113.9", "force": "yes"},
        {"ip": "not-an-ip"},
        {},
    ):
        async with http.post(url, json=bad, headers=admin) as resp:
            assert resp.status == 422, bad
            assert (await resp.json())["code"] == "VALIDATION_ERROR"
    async with http.post(url, data=b"{not json", headers={**admin, "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    async with http.post(url, json={"ip": "203.0.113.9", "ttlSeconds": 60, "reason": "abuse"}, headers=admin) as resp:
        assert resp.status == 201
        block = await resp.json()
    created, expires = (datetime.fromisoformat(block[k]) for k in ("createdAt", "expiresAt"))
    assert block["createdAt"].endswith("Z") and block["expiresAt"].endswith("Z")
    assert (expires - created).total_seconds() == 60
    async with http.get(url, headers=admin) as resp:
        listed = {item["ip"]: item for item in (await resp.json())["items"]}
    assert listed["203.0.113.9/32"]["expiresAt"] == block["expiresAt"]


async def test_a_block_covering_the_caller_or_everyone_needs_force(
    open_gateway: OpenGateway,
    store: Store,
    http: aiohttp.ClientSession,
    codec: TokenCodec,
) -> None:
    gw = await open_gateway(gateway_trusted_proxies="127.0.0.1/32", store=store)
    admin = {**bearer(codec.issue(sub="boss", role="admin")), **CALLER}
    url = gw.url + API
    for ip, kind in (
        ("0.0.0.0/0", "covers_all"),
        ("::/0", "covers_all"),
        ("198.51.100.7", "covers_caller"),
        ("198.51.100.0/24", "covers_caller"),
    ):
        async with http.post(url, json={"ip": ip}, headers=admin) as resp:
            assert resp.status == 422, ip
            assert (await resp.json())["details"][0]["type"] == kind
    async with http.get(gw.url + "/api/pricing", headers=CALLER) as resp:
        assert resp.status == 200  # nothing was blocked
    async with http.post(url, json={"ip": "198.51.100.0/24", "force": True}, headers=admin) as resp:
        assert resp.status == 201
    async with http.get(gw.url + "/api/pricing", headers=CALLER) as resp:
        assert resp.status == 403  # forced: the caller's own address is blocked, as asked


async def test_real_core_decides_for_a_demoted_or_suspended_admin(
    live_core: LiveServer,
    open_gateway: OpenGateway,
    http: aiohttp.ClientSession,
) -> None:
    rt = live_core.runtime
    gw = await open_gateway(core_url=live_core.url, store=rt.store)
    admin = await create_user(rt, roles=["admin"])
    suspended = await create_user(rt, roles=["admin"], status="suspended")
    # A token that still says admin for a user whose live role is "user" (demoted since).
    demoted = await create_user(rt, roles=["user"])
    stale = rt.codec.issue(sub=demoted.id, role="admin", roles=["admin"], email=demoted.email)
    async with http.get(gw.url + API, headers=admin.headers) as resp:
        assert resp.status == 200, await resp.text()
    for headers in (suspended.headers, bearer(stale)):
        async with http.post(gw.url + API, json={"ip": "0.0.0.0/0", "force": True}, headers=headers) as resp:
            assert resp.status == 403, await resp.text()
    async with http.get(gw.url + "/api/pricing") as resp:
        assert resp.status == 200  # nobody got locked out
