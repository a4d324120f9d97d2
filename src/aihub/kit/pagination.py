"""Keyset (cursor) pagination: ``?limit=&cursor=`` in, ``{items, nextCursor}`` out.

The cursor is an opaque base64 of the last row's sort key, so pages stay stable while rows
are inserted and cost the same at page 1 and page 10,000.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from aihub.kit.errors import ValidationFailed
from aihub.kit.jsonutil import dumps, loads
from aihub.kit.schemas import ApiModel

T = TypeVar("T")
Row = TypeVar("Row")


class Page(ApiModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Paged(Generic[Row]):
    """One page as services return it: the rows and the next cursor. The response schema (a
    ``Page`` of the item's schema) reads it by attribute."""

    items: list[Row]
    next_cursor: str | None = None


class PageParams(BaseModel):
    limit: int = 20
    cursor: str | None = None


async def page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1–100")] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="From a previous nextCursor")] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(created_at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = dumps([created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = loads(base64.urlsafe_b64decode(padded.encode()))
        return dt.datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationFailed(
            "The cursor is not valid", details=[{"field": "query.cursor", "message": "invalid cursor"}]
        ) from exc


def keyset(
    stmt: Select[Any],
    created_col: InstrumentedAttribute[dt.datetime],
    id_col: InstrumentedAttribute[uuid.UUID],
    params: PageParams,
) -> Select[Any]:
    """Newest first; one extra row tells whether a next page exists."""
    if params.cursor:
        created, row_id = decode_cursor(params.cursor)
        stmt = stmt.where(tuple_(created_col, id_col) < tuple_(created, row_id))
    return stmt.order_by(created_col.desc(), id_col.desc()).limit(params.limit + 1)


def paged(rows: Sequence[Row], params: PageParams, key: Any) -> Paged[Row]:
    """``page_of`` as a ``Paged``."""
    return Paged(*page_of(rows, params, key))


def page_of(rows: Sequence[Row], params: PageParams, key: Any) -> tuple[list[Row], str | None]:
    """Split the fetched rows into this page and the next cursor (``key(row) -> (created, id)``)."""
    items = list(rows[: params.limit])
    if len(rows) > params.limit and items:
        created, row_id = key(items[-1])
        return items, encode_cursor(created, row_id)
    return items, None


# ------------------------------------------------------------------ short lists held whole

SortKey = tuple[str | int | float, ...]


async def short_list_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1–100 (default 100: a short list)")] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="From a previous nextCursor")] = None,
) -> PageParams:
    """The list contract for lists that fit in memory (roles, prices): the same ``limit`` and
    ``cursor`` as every list, with a default that returns them whole."""
    return PageParams(limit=limit, cursor=cursor)


def page_of_sorted(items: Sequence[Row], params: PageParams, key: Any) -> tuple[list[Row], str | None]:
    """One page of a list read whole, ordered by ``key(item)`` (unique, JSON-able tuple): the
    cursor is the last item's key, so a page stays right when items come or go in between."""
    ordered = sorted(items, key=key)
    if params.cursor:
        after = _decode_key(params.cursor)
        ordered = [item for item in ordered if list(key(item)) > after]
    page = ordered[: params.limit]
    if len(ordered) > params.limit and page:
        raw = dumps(list(key(page[-1])))
        return page, base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return page, None


def _decode_key(cursor: str) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ValidationFailed(
            "The cursor is not valid", details=[{"field": "query.cursor", "message": "invalid cursor"}]
        )
    return value
