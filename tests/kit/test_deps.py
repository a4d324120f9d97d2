"""The request plumbing (kit/deps.py) on a small service: the app hands in how callers are
authenticated and what a unit of work carries; a route that would not commit is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, Request

from aihub.kit.app import create_service_app
from aihub.kit.db import Tx
from aihub.kit.deps import NO_CALLERS, Access, RequirePermission, TxDep, TxRoute, current_principal
from aihub.kit.errors import Forbidden
from aihub.kit.runtime import Runtime
from aihub.kit.slots import Slot

MARK: Slot[str] = Slot("test.mark")


@dataclass(frozen=True)
class Caller:
    name: str
    permissions: frozenset[str]

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"missing {permission}")


async def by_header(request: Request, runtime: Runtime, tx: Tx) -> Caller:
    """A caller named by a header: enough to see what the plumbing does with it."""
    name = request.headers.get("x-test-caller", "")
    return Caller(name, frozenset(request.headers.get("x-test-perms", "").split(",")))


def mark(runtime: Runtime, tx: Tx) -> None:
    tx.info.set(MARK, "opened by the app's hook")


router = APIRouter(route_class=TxRoute)


@router.get("/whoami")
async def whoami(tx: TxDep, me: Annotated[Caller, Depends(current_principal)]) -> dict[str, str]:
    return {"name": me.name, "mark": tx.info.get(MARK, "none")}


@router.get("/secret")
async def secret(me: Annotated[Caller, RequirePermission("secret:read")]) -> dict[str, str]:
    return {"name": me.name}


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app("test", runtime, [router], access=Access(by_header, on_tx=mark), description="deps")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deps.test") as c:
        yield c


async def test_the_apps_authenticator_names_the_caller_and_its_hook_marks_the_unit_of_work(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/whoami", headers={"x-test-caller": "ada"})
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "ada", "mark": "opened by the app's hook"}


async def test_require_permission_asks_the_caller(client: httpx.AsyncClient) -> None:
    refused = await client.get("/secret", headers={"x-test-caller": "ada", "x-test-perms": "other:read"})
    assert refused.status_code == 403 and refused.json()["code"] == "FORBIDDEN"
    allowed = await client.get("/secret", headers={"x-test-caller": "ada", "x-test-perms": "secret:read"})
    assert allowed.status_code == 200 and allowed.json() == {"name": "ada"}


async def test_an_app_without_callers_refuses_every_caller(runtime: Runtime) -> None:
    app = create_service_app("test", runtime, [router], access=NO_CALLERS, description="deps")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://deps.test") as c:
        response = await c.get("/whoami", headers={"x-test-caller": "ada"})
    assert response.status_code == 401 and response.json()["code"] == "UNAUTHORIZED"


def test_a_route_that_opens_a_unit_of_work_without_committing_it_is_refused(runtime: Runtime) -> None:
    plain = APIRouter()  # the default route class: its writes would roll back when the request ends

    @plain.post("/write")
    async def write(tx: TxDep) -> None:
        return None

    @plain.get("/read-nothing")
    async def read_nothing() -> None:  # no unit of work: nothing to commit, accepted
        return None

    with pytest.raises(TypeError, match="/write"):
        create_service_app("test", runtime, [plain], access=NO_CALLERS, description="deps")
    accepted = APIRouter()
    accepted.add_api_route("/read-nothing", read_nothing, methods=["GET"])
    create_service_app("test", runtime, [accepted], access=NO_CALLERS, description="deps")
