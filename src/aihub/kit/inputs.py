"""What every value a client sends must satisfy, for every service, in one place.

* Text: no NUL character and no lone UTF-16 surrogate anywhere — in any JSON string at any
  depth (keys too), in any query parameter, in any path parameter. PostgreSQL cannot store a
  NUL in text, and a lone surrogate cannot be encoded as UTF-8 by any driver, so both would
  otherwise fail deep inside a query as a 500. :func:`refuse_bad_text` is installed on every
  route of both FastAPI apps by ``create_service_app``.
* :data:`Timestamp`: an RFC 3339 date-time string (never a bare number taken as epoch
  seconds), within the years 1–9999 once converted to UTC. Every timestamp a client sends, in
  a query or a body, has this type.
* :data:`Metadata`: a JSON object of bounded size and depth whose integers fit 64 bits,
  whose floats are finite and whose text is valid. Every ``metadata`` field has this type.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Request
from pydantic import AfterValidator, BeforeValidator, Field

from aihub.kit.errors import ValidationFailed
from aihub.kit.jsonutil import dumps

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_METADATA_BYTES = 8_192
MAX_METADATA_DEPTH = 8
MAX_METADATA_KEYS = 50
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ------------------------------------------------------------------ text


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "must not contain the NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (a lone surrogate such as \\ud800 is not)"
    return None


def printable(value: str) -> str:
    """A string safe to echo in an error (NUL and lone surrogates as escapes)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def _text_problems(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, message) for every bad string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        if problem := text_problem(value):
            yield path, problem
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{printable(key)}"
            if problem := text_problem(key):
                yield where, f"key {problem}"
            yield from _text_problems(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _text_problems(item, f"{path}.{index}")


def _may_hold_bad_text(body: bytes) -> bool:
    # JSON can only carry a NUL as the escape \u0000 (a raw control character is invalid JSON),
    # and a surrogate as an escape or as raw CESU bytes (0xED lead byte; json.loads decodes
    # bytes with surrogatepass). A body with neither cannot hold bad text: no need to parse it.
    return b"\\u" in body or b"\xed" in body


def _detail(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message, "type": "invalid_text"}


async def refuse_bad_text(request: Request) -> None:
    """App-wide dependency: 422 ``VALIDATION_ERROR`` naming every field that holds bad text.

    It runs before any other dependency of the route (authentication included), so a bad value
    never reaches a query.
    """
    details: list[dict[str, str]] = []
    for name, value in request.path_params.items():
        if isinstance(value, str) and (problem := text_problem(value)):
            details.append(_detail(f"path.{name}", problem))
    for name, value in request.query_params.multi_items():
        field = f"query.{printable(name)}"
        if problem := text_problem(name):
            details.append(_detail(field, f"name {problem}"))
        if problem := text_problem(value):
            details.append(_detail(field, problem))
    if request.method in _BODY_METHODS:
        body = await request.body()  # cached by Starlette: FastAPI's own parsing reuses it
        if body and _may_hold_bad_text(body):
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None  # not JSON: the body's own validation answers
            details.extend(_detail(field, message) for field, message in _text_problems(parsed, "body"))
    if details:
        raise ValidationFailed(details=details)


# ------------------------------------------------------------------ timestamps

# RFC 3339 section 5.6 date-time (a missing offset is tolerated and read as UTC, as the
# database layer stores it). No date-only value, no epoch number.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$",
)


def _rfc3339_text(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # already parsed (a service calling a model)
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2025-01-31T12:00:00Z")
    return value


def _utc_in_range(value: dt.datetime) -> dt.datetime:
    try:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except OverflowError:
        # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC; 0001-01-01T00:00:00+14:00 in year 0.
        raise ValueError("must lie between the years 0001 and 9999 once converted to UTC") from None


Timestamp = Annotated[dt.datetime, BeforeValidator(_rfc3339_text), AfterValidator(_utc_in_range)]
"""A client's timestamp, aware and in UTC after validation."""


# ------------------------------------------------------------------ metadata


def metadata_problem(value: Any) -> str | None:
    """Why a value is not acceptable metadata, or None."""
    if not isinstance(value, dict):
        return "must be a JSON object"
    if len(value) > MAX_METADATA_KEYS:
        return f"must have at most {MAX_METADATA_KEYS} keys"
    problem = _value_problem(value, 1)
    if problem:
        return problem
    if len(dumps(value)) > MAX_METADATA_BYTES:
        return f"must be at most {MAX_METADATA_BYTES} bytes as JSON"
    return None


def _value_problem(value: Any, depth: int) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "integers must fit in 64 bits"
    if isinstance(value, float):
        # JSON has no NaN or Infinity, and 1e400 parses as inf: it would not come back as sent.
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            return f"must be nested at most {MAX_METADATA_DEPTH} levels deep"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict):
                if not isinstance(key, str):
                    return "keys must be strings"
                if problem := text_problem(key):
                    return f"key {problem}"
            if problem := _value_problem(item, depth + 1):
                return problem
        return None
    return f"{type(value).__name__} is not a JSON value"


def _valid_metadata(value: dict[str, Any]) -> dict[str, Any]:
    problem = metadata_problem(value)
    if problem:
        raise ValueError(f"metadata {problem}")
    return value


Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_valid_metadata),
    Field(
        description=(
            f"A JSON object: at most {MAX_METADATA_KEYS} keys, {MAX_METADATA_BYTES} bytes, "
            f"{MAX_METADATA_DEPTH} levels; integers within 64 bits"
        )
    ),
]
