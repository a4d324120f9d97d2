"""Pricing: seeded rows, admin edits with history, public reads, and the arithmetic of a charge."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aihub.core.pricing.service import cost, credits_for
from aihub.models import ModelPrice
from tests.conftest import Caller
from tests.core.test_users import assert_error


def price(i: str = "0", o: str = "0", r: str = "0", s: str = "0") -> ModelPrice:
    return ModelPrice(
        provider="p",
        model="m",
        input_per_1k=Decimal(i),
        output_per_1k=Decimal(o),
        per_request=Decimal(r),
        per_second=Decimal(s),
    )


@pytest.mark.parametrize(
    ("p", "usage", "expected"),
    [
        (price("2.5", "10"), {"input_tokens": 1000, "output_tokens": 1000}, 13),
        (price("2.5", "10"), {"input_tokens": 1, "output_tokens": 0}, 1),  # 0.0025 rounds up to 1
        (price("2.5", "10"), {"input_tokens": 0, "output_tokens": 0}, 0),  # zero tokens are free
        (price("2.5", "10", r="0.5"), {}, 1),  # ... unless there is a per-request price
        (price(s="100"), {"duration_seconds": 4}, 400),
        (price(s="100"), {"duration_seconds": 2.5}, 250),
        (price(s="0.333333"), {"duration_seconds": 3}, 1),  # 0.999999 -> 1
        (price("0.15", "0.6"), {"input_tokens": 10**12, "output_tokens": 10**12}, 750_000_000),
        (price("0.000001"), {"input_tokens": 999}, 1),
    ],
)
def test_charge_arithmetic(p: ModelPrice, usage: dict[str, int], expected: int) -> None:
    assert credits_for(p, **usage) == expected


@given(
    i=st.decimals(min_value=0, max_value=1000, places=6),
    o=st.decimals(min_value=0, max_value=1000, places=6),
    tin=st.integers(min_value=0, max_value=10**9),
    tout=st.integers(min_value=0, max_value=10**9),
)
def test_charge_is_the_exact_cost_rounded_up(i: Decimal, o: Decimal, tin: int, tout: int) -> None:
    p = price(str(i), str(o))
    exact = cost(p, input_tokens=tin, output_tokens=tout)
    charged = credits_for(p, input_tokens=tin, output_tokens=tout)
    assert charged - 1 < exact <= charged
    # More usage never costs less.
    assert credits_for(p, input_tokens=tin + 1, output_tokens=tout) >= charged


async def test_seeded_prices_are_public(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/pricing")
    assert response.status_code == 200
    items = {(p["provider"], p["model"]): p for p in response.json()["items"]}
    assert {"openai", "anthropic", "google"} <= {provider for provider, _ in items}
    sora = items[("openai", "sora2")]
    assert sora["perSecond"] == 100 and sora["inputPer1k"] == 0
    assert items[("openai", "gpt-4o")]["inputPer1k"] == 2.5
    only_google = (await client.get("/api/pricing", params={"provider": "google"})).json()["items"]
    assert {p["provider"] for p in only_google} == {"google"}


async def test_put_creates_then_replaces_and_keeps_history(client: httpx.AsyncClient, admin: Caller) -> None:
    url = "/api/pricing/mistral/mistral-large"
    created = await client.put(url, headers=admin.headers, json={"inputPer1k": 2, "outputPer1k": "6.125"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["inputPer1k"], body["outputPer1k"], body["perRequest"], body["perSecond"]) == (2, 6.125, 0, 0)
    replaced = await client.put(url, headers=admin.headers, json={"inputPer1k": 0.5, "outputPer1k": 1.5})
    assert replaced.status_code == 200
    current = (await client.get(url)).json()
    assert current["inputPer1k"] == 0.5 and current["effectiveTo"] is None
    history = (await client.get(f"{url}/history")).json()["items"]
    assert [h["inputPer1k"] for h in history] == [0.5, 2]
    assert history[1]["effectiveTo"] is not None
    assert (await client.delete(url, headers=admin.headers)).status_code == 204
    assert_error(await client.get(url), 422, "UNKNOWN_MODEL")
    assert len((await client.get(f"{url}/history")).json()["items"]) == 2
    assert_error(await client.delete(url, headers=admin.headers), 404, "PRICE_NOT_FOUND")


async def test_pricing_writes_need_permission(client: httpx.AsyncClient, user: Caller, manager: Caller) -> None:
    body = {"inputPer1k": 1, "outputPer1k": 1}
    assert_error(await client.put("/api/pricing/openai/gpt-4o", json=body), 401, "UNAUTHORIZED")
    assert_error(await client.put("/api/pricing/openai/gpt-4o", headers=user.headers, json=body), 403, "FORBIDDEN")
    assert_error(await client.put("/api/pricing/openai/gpt-4o", headers=manager.headers, json=body), 403, "FORBIDDEN")
    assert_error(await client.delete("/api/pricing/openai/gpt-4o", headers=user.headers), 403, "FORBIDDEN")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputPer1k": -1, "outputPer1k": 1},
        {"inputPer1k": "abc", "outputPer1k": 1},
        {"inputPer1k": "0.0000001", "outputPer1k": 1},  # more than 6 decimals
        {"inputPer1k": 1e20, "outputPer1k": 1},
        {"inputPer1k": 1, "outputPer1k": 1, "currency": "usd"},
    ],
)
async def test_put_validation(client: httpx.AsyncClient, admin: Caller, body: dict[str, object]) -> None:
    assert_error(await client.put("/api/pricing/openai/x", headers=admin.headers, json=body), 422, "VALIDATION_ERROR")


async def test_bad_path_names(client: httpx.AsyncClient, admin: Caller) -> None:
    body = {"inputPer1k": 1, "outputPer1k": 1}
    for path in ("/api/pricing/Open%20AI/gpt", "/api/pricing/openai/" + "m" * 200, "/api/pricing/-x/gpt"):
        assert_error(await client.put(path, headers=admin.headers, json=body), 422, "VALIDATION_ERROR")
