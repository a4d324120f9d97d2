"""Alembic environment. Runs on the connection handed over by ``aihub.kit.migrate``."""

from __future__ import annotations

from alembic import context

import aihub.models  # noqa: F401  (registers every table on the metadata)
from aihub.kit.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic` run by hand, which we do not document
    raise RuntimeError("run migrations with `aihub migrate`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
