"""The framework floor of the deduct bench: core's own app plus one trivial authenticated endpoint.

    AIHUB_… settings as for core; .venv/bin/python bench/ledger/floor_app.py PORT

``POST /bench/floor`` takes the deduct body (Pydantic), authenticates the caller with core's own
dependencies (JWT, blacklist, permission ``credits:deduct``) through core's middleware, and
answers JSON without touching the database: what any core endpoint costs before its own work.
It runs only inside the bench; nothing in the product serves it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import uvicorn

from aihub.config import Settings
from aihub.core.app import create_app
from aihub.core.credits.schemas import DeductIn
from aihub.core.rbac.service import Principal
from aihub.kit.deps import RequirePermission
from aihub.kit.logging import configure_logging

settings = Settings()
configure_logging(settings.log_level)  # as `aihub serve` does: the bench's level, not info per request
app = create_app(settings)


@app.post("/bench/floor")
async def floor(body: DeductIn, caller: Annotated[Principal, RequirePermission("credits:deduct")]) -> dict[str, Any]:
    return {"userId": str(body.user_id), "amount": body.amount, "caller": caller.id}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="httptools",
        loop="uvloop",
        log_config=None,
        access_log=False,
        server_header=False,
    )
