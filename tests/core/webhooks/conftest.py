"""Webhook fixtures: core with fast retries and the job runner started, a receiver on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from aihub.config import Settings
from aihub.core.webhooks import jobs as webhook_jobs
from aihub.kit.jobs import jobs_of
from aihub.kit.runtime import Runtime
from tests.conftest import Caller, _core_app, create_user, free_port
from tests.core.webhooks.receiver import Receiver


@dataclass
class Hub:
    runtime: Runtime
    client: httpx.AsyncClient
    admin: Caller


def fast(settings: Settings, **extra: Any) -> Settings:
    return settings.model_copy(
        update={"webhook_backoff_seconds": 0.05, "webhook_retry_interval_seconds": 0.05, **extra}
    )


@pytest.fixture
async def hub(settings: Settings) -> AsyncIterator[Hub]:
    rt = Runtime.build(fast(settings))
    try:
        await jobs_of(rt).start(webhook_jobs.periodic(rt))
        transport = httpx.ASGITransport(app=_core_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://core.test") as client:
            yield Hub(rt, client, await create_user(rt, roles=["admin"]))
    finally:
        await rt.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver(free_port(), failures=2)
    await server.start()
    yield server
    await server.stop()


async def register(hub: Hub, url: str, events: list[str]) -> dict[str, Any]:
    response = await hub.client.post("/api/webhooks", json={"url": url, "events": events}, headers=hub.admin.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())
